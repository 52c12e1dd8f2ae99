#!/usr/bin/env python3
"""Puzzle 1: how much a non-blocking sender queues, send() until EAGAIN (1A) or while
poll() says POLLOUT (1B).

    puzzle1.py --until eagain|pollout

Stdlib only, Python 3.8+, run in the cell's own network namespace by the agent. Limits
come from KMATRIX_ITERATION_CAP and KMATRIX_WINDOW_S; the result (metrics, an empty
series) goes to result.json, or to stdout when run by hand.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
import time

TYPE_CHECKING = False
"""typing costs ~0.15 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from typing import Any

try:
    import kmatrix_probe as probe
except ImportError:  # run by hand: the library is in the directory above
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kmatrix_probe as probe

CHUNK = b"A" * 16384
SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes in the send queue not yet acknowledged
SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent
SIOCINQ = 0x541B  # FIONREAD: bytes waiting in the receive queue
SETTLE_S = 0.2  # lets loopback deliver what was sent before the queues are read
DEFAULTS = {"window_s": 25.0, "iteration_cap": 20000}
USAGE = "usage: puzzle1.py --until eagain|pollout  (Puzzle 1: how much a sender queues.)"
"""Limits for a run by hand, where no KMATRIX_* variable is set."""


def _ioctl_int(sock: socket.socket, request: int) -> int | None:
    """An int-valued socket ioctl, or None where the kernel lacks it."""
    try:
        raw = fcntl.ioctl(sock.fileno(), request, struct.pack("i", 0))
    except OSError:
        return None
    return struct.unpack("i", raw)[0]


def _read_sysctl(name: str) -> str | None:
    """A sysctl as this namespace sees it, whitespace normalised; None if absent."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def _connected_pair() -> tuple:
    """A listener on an ephemeral loopback port, a client, and the accepted socket."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    client.connect(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def _writable_now(sock: socket.socket) -> bool:
    """1B's test, as the seed writes it: a fresh poll object, POLLOUT, zero timeout."""
    poll = select.poll()
    poll.register(sock, select.POLLOUT)
    return bool(poll.poll(0))


def _fill(sock: socket.socket, until: str, cap: int, window_s: float) -> dict[str, Any]:
    """Send 16 KiB chunks until the stop condition (`until`), the cap or the window."""
    sent = sends = last = 0
    ended_by = "cap"
    deadline = time.monotonic() + window_s
    sock.setblocking(False)
    while sends < cap:
        if time.monotonic() >= deadline:
            ended_by = "window"
            break
        if until == "pollout" and not _writable_now(sock):
            ended_by = "pollout"
            break
        try:
            n = sock.send(CHUNK)
        except BlockingIOError:
            ended_by = "eagain"
            break
        sent += n
        sends += 1
        last = n
    sock.setblocking(True)
    return {"bytes_queued": sent, "sends": sends, "last_send": last, "ended_by": ended_by}


def run(until: str, cap: int, window_s: float) -> dict[str, Any]:
    """Fill one connection as `until` says, then read the queues on both ends."""
    server, client, accepted = _connected_pair()
    try:
        sndbuf = accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        filled = _fill(accepted, until, cap, window_s)
        time.sleep(SETTLE_S)
        metrics = dict(filled)
        metrics.update(
            {
                "sndbuf_before": sndbuf,
                "sndbuf_after": accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                "outq": _ioctl_int(accepted, SIOCOUTQ),
                "outq_nsd": _ioctl_int(accepted, SIOCOUTQNSD),
                "recv_inq": _ioctl_int(client, SIOCINQ),
                "tcp_wmem": _read_sysctl("net.ipv4.tcp_wmem"),
                "tcp_notsent_lowat": _read_sysctl("net.ipv4.tcp_notsent_lowat"),
                "settle_s": SETTLE_S,
            }
        )
    finally:
        for sock in (accepted, client, server):
            sock.close()
    probe.log(
        f"until {until}: {metrics['bytes_queued']} bytes in {metrics['sends']} sends,"
        f" ended by {metrics['ended_by']}"
    )
    return {
        "metrics": metrics,
        "series": [],
        "evidence": {"stall": None, "final": None},
        "error": None,
        "status_detail": f"ended_by={metrics['ended_by']} bytes_queued={metrics['bytes_queued']}",
    }


def main(argv: list | None = None) -> int:
    until = probe.choice(argv, "--until", ("eagain", "pollout"), USAGE)
    cap = int(probe.limit("iteration_cap", DEFAULTS["iteration_cap"]))
    window_s = float(probe.limit("window_s", DEFAULTS["window_s"]))
    probe.write_result(run(until, cap, window_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
