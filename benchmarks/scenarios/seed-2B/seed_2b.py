#!/usr/bin/env python3
"""The seed's 2B loop, bare, for `connections` connections; writes its rate.

Stdlib only. The loop is the seed's (socket, connect, accept, client close, server
close, and the seed's `i % 10000` check, here taking a time stamp instead of printing a
dot); only a clock read at the start and at the end is added. The result goes to
$KMATRIX_RESULT_DIR/result.json (stdout when run by hand).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import time

PORT = 1234
PARAM = "connections"
"""The manifest's parameter, which the agent passes under its own name."""


def loop(connections: int) -> tuple[float, list]:
    """Seconds for `connections` iterations, and (iteration, seconds) every 10,000."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    s.bind(("127.0.0.1", PORT))
    s.listen(16)
    marks = []
    start = time.monotonic()
    for i in itertools.count():
        if i % 10000 == 0:
            marks.append((i, time.monotonic() - start))
        if i == connections:
            break
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        c.connect(("127.0.0.1", PORT))
        sc, _ = s.accept()
        c.close()
        sc.close()
    return time.monotonic() - start, marks


def main() -> int:
    try:
        connections = int(os.environ.get(PARAM, "8000"))
    except ValueError:
        print("seed_2b: connections must be an integer", file=sys.stderr)
        return 2
    elapsed, marks = loop(connections)
    doc = {
        "metrics": {
            "rate": connections / elapsed,
            "connections": connections,
            "elapsed_s": round(elapsed, 3),
        },
        "series": [{"t": round(t, 3), "iterations": i} for i, t in marks],
        "status_detail": f"{connections} connections in {elapsed:.2f} s",
    }
    text = json.dumps(doc, indent=1)
    directory = os.environ.get("KMATRIX_RESULT_DIR")
    if not directory:
        print(text)
        return 0
    with open(os.path.join(directory, "result.json"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
