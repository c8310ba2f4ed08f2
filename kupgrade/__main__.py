import sys

from kupgrade.cli import main

sys.exit(main())
