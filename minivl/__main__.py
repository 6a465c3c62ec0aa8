"""``python -m minivl`` is the ``minivl`` command."""

from minivl.cli import main

raise SystemExit(main())
