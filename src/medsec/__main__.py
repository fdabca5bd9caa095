"""``python -m medsec`` is the ``medsec`` command."""

import sys

from medsec.cli import main

if __name__ == "__main__":
    sys.exit(main())
