"""``python -m imagebridge`` runs the command line."""

import sys

from imagebridge.cli import main

sys.exit(main())
