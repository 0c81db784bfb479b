"""``python -m local`` is ``python -m local.run``."""

import sys

from local.run import main

sys.exit(main())
