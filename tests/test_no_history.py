"""The package's code and docstrings say what the code does and why, not when it changed.

History labels ("session 12", "issue 15", "(#27)", a citation of BENCHMARKS.md, a date)
belong in BENCHMARKS.md and the git log, where they are dated evidence; in the package they go
stale and tell a reader of the code nothing. A regex scan of every .py file in napari_paser/,
learners/ and sampling/ keeps them out. "Stage 2/3" is not history: it names the PaSeR algorithm's
stages.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("napari_paser", "learners", "sampling")
HISTORY = re.compile(
    r"\bsessions? \d+\b"                     # "session 12", "sessions 8 and 9"
    r"|\bs\d{1,2} (?:f2|TAUDIS|routing)\b"   # "s10 f2", a benchmark session's short name
    r"|\bissues? #?\d+\b"                    # "issue 15"
    r"|\(#\d+\)"                             # "(#27)"
    r"|(?-i:BENCHMARKS)(?:\.md)?"            # BENCHMARKS.md cited: the evidence log, not the code's reason
    r"|\b20\d\d-\d\d-\d\d\b",                # a date
    re.IGNORECASE,
)


def history_lines() -> list[str]:
    """`file:line: text` of every line of the package source that tells history."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if HISTORY.search(line):
                    found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    return found


def test_the_package_source_tells_no_history():
    found = history_lines()
    assert not found, ("history in the package (say what the code does and why; the dated evidence "
                       "lives in BENCHMARKS.md):\n" + "\n".join(found))


def test_the_scan_catches_each_kind_of_label():
    caught = ["(BENCHMARKS.md, session 10)", "as up to Session 11", "issue 15's target", "fixed in (#27)",
              'BENCHMARKS.md, "PaSeR routing"', 'BENCHMARKS "Cold start"', "measured 2026-12-01", "s10 f2 rows",
              "f2 got worse (BENCHMARKS.md)"]
    kept = ["stage 2 trains the policy", "a labeling session",
            "session_dir", "Session.create(folder)", "the 2 sessions", 'help="benchmarks"']
    assert all(HISTORY.search(text) for text in caught), [t for t in caught if not HISTORY.search(t)]
    assert not any(HISTORY.search(text) for text in kept), [t for t in kept if HISTORY.search(t)]
