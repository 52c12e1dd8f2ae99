"""Report: static HTML pages for runs, diffs and searches."""
