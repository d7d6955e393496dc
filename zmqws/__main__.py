"""``python -m zmqws``: the command line (:mod:`zmqws.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
