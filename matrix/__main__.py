"""`python -m matrix` is `kmatrix`."""

from matrix.cli import main

raise SystemExit(main())
