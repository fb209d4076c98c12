"""`python -m yuyan ...`: the `yuyan` command."""

import sys

from yuyan.cli import main

sys.exit(main())
