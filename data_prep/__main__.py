"""`python -m alm.data_prep DATASET --src DIR --out DIR ...` (same as `alm prep`)."""

import sys

from alm.data_prep.cli import main

sys.exit(main())
