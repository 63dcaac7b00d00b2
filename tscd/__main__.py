"""``python -m tscd ...`` (and ``torchrun -m tscd train ...``)."""
import sys

from .cli import main

sys.exit(main())
