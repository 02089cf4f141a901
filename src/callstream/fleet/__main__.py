"""``python -m callstream.fleet``: the fleet demo (`callstream.fleet.demo`)."""

import sys

from callstream.fleet.demo import main

sys.exit(main())
