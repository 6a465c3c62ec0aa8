"""``python -m minivl.data.synthetic --out DIR [--scale S] [--seed N]``."""

import sys

from minivl.data.synthetic.suite import main

sys.exit(main())
