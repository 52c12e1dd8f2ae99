"""`python3 -m matrix.runners.remote_batch WORKDIR`: one VM batch on an SSH host.

The remote runner ships the `matrix` package (the modules this imports are stdlib-only,
Python 3.11+) with WORKDIR/batch.json, and runs the vng runner right here, so a VM on a
remote host boots exactly as it would locally. The agent's results land in
WORKDIR/out, where the remote runner pulls them from; the outcome goes to
WORKDIR/outcome.json. SIGTERM, SIGHUP or SIGINT stop the batch cleanly.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from matrix.plan import cells as plan
from matrix.run import rundir
from matrix.runners.vng import VngRunner


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m matrix.runners.remote_batch WORKDIR", file=sys.stderr)
        return 2
    workdir = Path(args[0]).resolve()
    doc = json.loads((workdir / "batch.json").read_text())
    (batch,) = plan.from_doc(doc["plan"])
    runner = VngRunner(**doc["vng"])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    outcome = runner.run_batch(batch, workdir, stop, lambda *_: None)
    out = asdict(outcome)
    out["results"] = sorted(outcome.results)
    out["console_log"] = str(outcome.console_log or "")
    rundir.write_json(workdir / "outcome.json", out)  # the guest can write here: no fixed tmp name
    return 0


if __name__ == "__main__":
    sys.exit(main())
