"""What the `paser` CLI runs: training, policy banks, prediction and routing of stacks, the demo."""
