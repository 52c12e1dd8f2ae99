"""Run: scheduling batches over machines, one attempt each, the run directory."""
