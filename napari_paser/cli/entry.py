"""`paser`'s entry point: parse, run the command, and turn every user error into one line on stderr with
exit status 2 (never a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from learners.errors import InputError
from napari_paser.cli.parser import build_parser
from napari_paser.errors import os_error_line


def _fail(message: str) -> int:
    """The one line of a user error (`paser: error: ...`, on one line), exit status 2."""
    print(f"paser: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a path that cannot be read or written: the user's to fix, never a traceback
        return _fail(os_error_line(exc))
    except MemoryError:
        return _fail("not enough memory for this job: lower the sizes (slices, --size, --n, --tile) or use a larger machine")
    except KeyboardInterrupt:
        print("paser: interrupted; files already written are complete", file=sys.stderr)
        return 130
