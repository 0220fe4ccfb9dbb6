"""`python -m inference generate ...`: see `inference.cli`."""

from inference.cli import main

raise SystemExit(main())
