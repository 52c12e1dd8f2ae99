"""Results: the run's table, its history across runs, and exports."""
