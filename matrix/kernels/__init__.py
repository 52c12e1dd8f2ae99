"""Kernels: the catalogue, Debian archive indexes, their verification and extraction."""
