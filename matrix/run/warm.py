"""Load what the end of a run needs while its first cells run.

Finishing a run reads its results into a pandas table and renders the report: pandas'
import (~0.4 s) and compiling the templates (~0.35 s, kept afterwards by the bytecode
cache of `matrix.report.render`) would otherwise come after the last cell, on the run's
critical path. A thread does both at the start, while the orchestrator mostly waits on
its runners. It is an optimisation only: whatever fails here is left for the real
import or render to report.
"""

from __future__ import annotations

import contextlib
import threading


def start(report: bool = True) -> threading.Thread:
    """Begin loading in the background; the thread never holds the process open."""
    thread = threading.Thread(target=_load, args=(report,), name="kmatrix-warm", daemon=True)
    thread.start()
    return thread


def _load(report: bool) -> None:
    with contextlib.suppress(Exception):
        import pandas  # noqa: F401

        if not report:
            return
        import matrix.report.history  # noqa: F401
        from matrix.report import render

        env = render.environment()
        for name in env.list_templates(filter_func=lambda n: n.endswith(".html")):
            env.get_template(name)
