"""`python -m yuyan.cli ...` (what `accelerate launch -m` and `torchrun -m` run): the `yuyan` command."""

import sys

from yuyan.cli import main

sys.exit(main())
