"""`python -m matrix` is `kmatrix`."""

from matrix.cli.main import main

raise SystemExit(main())
