"""The research harness behind `paser bench`: routing and active-learning benchmarks built
only on the shipped pipeline (the real samplers, session code and training)."""
