"""Classify: measurements -> verdicts, and folding re-measured attempts."""
