import sys

from escrow.ops.cli import main

sys.exit(main())
