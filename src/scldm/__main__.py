import sys

from scldm.cli import main

sys.exit(main())
