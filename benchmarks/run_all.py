"""Run every benchmark in turn (`make bench`); each writes its JSON under benchmarks/results/.

    .venv/bin/python benchmarks/run_all.py [--only foundation,soc_quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = {
    "foundation": [sys.executable, str(HERE / "bench_foundation.py")],
    "soc_quick": [sys.executable, str(HERE / "bench_train_quality.py")],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        print(f"== {name}", flush=True)
        subprocess.run(BENCHMARKS[name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
