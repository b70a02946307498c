"""``python -m ota_daemon.devsim``."""

import sys

from ota_daemon.devsim.explore import main

sys.exit(main())
