"""``python -m callstream``: the command line (`callstream.cli`)."""

import sys

from callstream.cli import main

sys.exit(main())
