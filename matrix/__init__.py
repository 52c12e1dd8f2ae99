"""kmatrix: run Linux TCP puzzles across kernels and sysctl sweeps, classify, report."""

__version__ = "0.1.0"
