"""`python -m edgecert` runs the command-line interface."""

from edgecert.cli import main

raise SystemExit(main())
