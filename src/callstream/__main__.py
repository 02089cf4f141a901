import sys

from callstream.cli import main

sys.exit(main())
