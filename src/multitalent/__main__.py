"""``python -m multitalent`` (also what ``torchrun -m multitalent train ...`` runs)."""

import sys

from multitalent.cli import main

sys.exit(main())
