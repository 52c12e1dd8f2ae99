"""Collect: what comes back from guests, read with bounds and vetted before use."""
