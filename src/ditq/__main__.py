"""``python -m ditq ...``: the ``ditq`` command line."""

import sys

from ditq.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
