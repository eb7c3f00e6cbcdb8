"""`python -m napari_paser.cli`: the `paser` command."""

import sys

from napari_paser.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
