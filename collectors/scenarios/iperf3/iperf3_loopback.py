"""Loopback TCP throughput with iperf3, in the cell's network namespace.

A one-off iperf3 server listens on 127.0.0.1 (a port free in this namespace, so a daemon
holding 5201 elsewhere does not matter) and a client sends to it for `duration` seconds
over `streams` parallel streams. Both parameters come from the environment, as kmatrix
passes scenario parameters. From iperf3's JSON it reports the throughput received and
sent, the sender's retransmits, the congestion control each end used, and one sample per
reporting interval so the report can plot throughput over time.

Stdlib only, Python 3.8+. Under kmatrix it writes $KMATRIX_RESULT_DIR/result.json; run
by hand (no KMATRIX_RESULT_DIR) it prints the same document on stdout:

    unshare -n sh -c 'ip link set lo up; duration=3 python3 iperf3_loopback.py'

Exit status, by kselftest's convention:
  0  measured, whatever the throughput (judging it is the host's job);
  2  the workload did not complete: a bad parameter, a server that never listened, an
     error iperf3 reported (3.12 with -J exits 0 even then, so its JSON is what
     counts), output that is not iperf3's JSON, or a client that overran; result.json
     has an `error` naming the phase;
  4  skipped: iperf3 is not installed. That says nothing about the kernel under test, so
     it is neither a pass nor the kernel's error; kselftest's own net tests skip the same
     way when a tool they need is missing. The reason is in status_detail and on stderr,
     and every cell of the scenario shows it, so it is not missed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

try:
    import kmatrix_probe as probe
except ImportError:  # run by hand: the library sits in collectors/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import kmatrix_probe as probe

IPERF3 = "iperf3"
HOST = "127.0.0.1"
MAX_STREAMS = 128  # iperf3's own limit for -P
LISTEN_WAIT_S = 10.0
CLIENT_SLACK_S = 30.0  # connect, parameter exchange and the end-of-test results, on a slow guest
SERVER_EXIT_WAIT_S = 10.0
CC_SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"
CC_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"


class Failure(Exception):
    """The workload did not complete: where (phase), a short name, and what happened."""

    def __init__(self, phase: str, name: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.name = name
        self.message = message


def param(name: str, default: int, maximum: int | None = None) -> int:
    """A positive integer parameter (kmatrix sets one per param), or a Failure."""
    try:
        return probe.count_param(name, default, maximum)
    except ValueError as e:
        raise Failure("params", "bad_param", str(e)) from None


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def free_port() -> int:
    """A TCP port nothing in this namespace is bound to."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a socket listens on HOST:port, from /proc/net/tcp (this namespace's).

    Not by connecting: a probe connection would be the one-off server's only test."""
    ip = struct.unpack("=I", socket.inet_aton(HOST))[0]  # as the kernel prints it: %08X of a __be32
    addr = f"{ip:08X}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == addr and fields[3] == "0A":
                    return True
    except OSError:
        return False
    return False


def tail(f: IO[str], limit: int = 2000) -> str:
    f.seek(0)
    return f.read()[-limit:].strip()


def _number(section: dict[str, Any], key: str) -> float | None:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _section(end: dict[str, Any], key: str) -> dict[str, Any]:
    value = end.get(key)
    if not isinstance(value, dict):
        raise Failure("parse", "bad_output", f"iperf3's JSON has no end.{key} object")
    return value


def summarise(doc: Any) -> dict[str, Any]:
    """iperf3's -J document -> the result's metrics, series, evidence and status_detail.

    Throughput is what the receiver got (end.sum_received); what the sender pushed and
    its retransmits are beside it. Raises Failure for an iperf3 error or a document
    without the figures."""
    if not isinstance(doc, dict):
        raise Failure("parse", "bad_output", "iperf3's output is not a JSON object")
    if doc.get("error"):
        raise Failure("client", "iperf3_error", f"iperf3: {doc['error']}")
    end = doc.get("end")
    if not isinstance(end, dict):
        raise Failure("parse", "bad_output", "iperf3's JSON has no end object")
    sent, received = _section(end, "sum_sent"), _section(end, "sum_received")
    throughput = _number(received, "bits_per_second")
    if throughput is None:
        raise Failure("parse", "bad_output", "end.sum_received.bits_per_second is not a number")
    cpu = end.get("cpu_utilization_percent")
    cpu = cpu if isinstance(cpu, dict) else {}
    streams = end.get("streams")
    optional = {
        "sent_bps": _number(sent, "bits_per_second"),
        "retransmits": _number(sent, "retransmits"),
        "bytes_received": _number(received, "bytes"),
        "seconds": _number(received, "seconds"),
        "streams": len(streams) if isinstance(streams, list) else None,
        "cpu_sender_pct": _number(cpu, "host_total"),
        "cpu_receiver_pct": _number(cpu, "remote_total"),
    }
    metrics: dict[str, Any] = {"throughput_bps": throughput}
    metrics.update((k, v) for k, v in optional.items() if v is not None)
    congestion = {
        "sender": end.get("sender_tcp_congestion"),
        "receiver": end.get("receiver_tcp_congestion"),
    }
    start = doc.get("start")
    version = start.get("version") if isinstance(start, dict) else None
    return {
        "metrics": metrics,
        "series": series(doc.get("intervals")),
        "evidence": {"congestion": congestion, "iperf3": version},
        "status_detail": detail(metrics, congestion),
    }


def series(intervals: Any) -> list[dict[str, Any]]:
    """One sample per reporting interval, from intervals[].sum, at the interval's end."""
    out: list[dict[str, Any]] = []
    for interval in intervals if isinstance(intervals, list) else []:
        s = interval.get("sum") if isinstance(interval, dict) else None
        if not isinstance(s, dict) or s.get("omitted"):
            continue
        t, bps = _number(s, "end"), _number(s, "bits_per_second")
        if t is None or bps is None:
            continue
        sample: dict[str, Any] = {"t": t, "bits_per_second": bps}
        for key in ("bytes", "retransmits"):
            value = _number(s, key)
            if value is not None:
                sample[key] = value
        out.append(sample)
    return out


def detail(metrics: dict[str, Any], congestion: dict[str, Any]) -> str:
    sender, receiver = congestion.get("sender"), congestion.get("receiver")
    if sender and sender == receiver:
        cc = f"congestion control {sender}"
    else:
        cc = f"congestion control sender {sender or '?'}, receiver {receiver or '?'}"
    text = f"{metrics['throughput_bps'] / 1e9:.2f} Gbit/s received"
    if "retransmits" in metrics:
        text += f", {metrics['retransmits']:.0f} retransmits"
    return f"{text}, {cc}"


def measure(duration: int, streams: int, scratch: str | None) -> dict[str, Any]:
    """Run the server and the client; the summary of the client's JSON.

    Each iperf3 end keeps its buffer in a file it creates under $TMPDIR and unlinks at
    once; that needs a local filesystem (a 9p share, as a VM's result directory is,
    refuses an unlinked file), so `scratch` is a private directory in the system's temp
    directory, and the result directory only where none can be made."""
    port = free_port()
    env = dict(os.environ, TMPDIR=scratch) if scratch else None
    with tempfile.TemporaryFile("w+", dir=scratch) as log:
        server = subprocess.Popen(
            [IPERF3, "-s", "-1", "-B", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_listening(server, port, log)
            client = run_client(port, duration, streams, env)
        finally:
            try:
                server.wait(SERVER_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        try:
            doc = json.loads(client.stdout)
        except ValueError:
            why = (client.stderr or client.stdout).strip()[-2000:]
            raise Failure(
                "client", "bad_output", f"iperf3 exited {client.returncode} without JSON: {why}"
            ) from None
        try:
            result = summarise(doc)
        except Failure as f:
            server_log = tail(log)
            if server_log:
                f.message += f" (server: {server_log[-500:]})"
            raise
    result["evidence"]["congestion"]["sysctl"] = read_text(CC_SYSCTL)
    result["evidence"]["congestion"]["available"] = read_text(CC_AVAILABLE)
    result["evidence"]["server_exit"] = server.returncode
    return result


def wait_listening(server: subprocess.Popen, port: int, log: IO[str]) -> None:
    deadline = time.monotonic() + LISTEN_WAIT_S
    while not listening(port):
        if server.poll() is not None:
            raise Failure(
                "server",
                "server_exited",
                f"iperf3 -s exited {server.returncode} before listening: {tail(log)}",
            )
        if time.monotonic() > deadline:
            raise Failure(
                "server",
                "server_not_listening",
                f"iperf3 -s not listening after {LISTEN_WAIT_S:.0f} s",
            )
        time.sleep(0.02)


def run_client(
    port: int, duration: int, streams: int, env: dict[str, str] | None
) -> subprocess.CompletedProcess:
    argv = [IPERF3, "-c", HOST, "-p", str(port), "-J", "-t", str(duration), "-P", str(streams)]
    limit = duration + CLIENT_SLACK_S
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limit,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise Failure(
            "client", "timeout", f"iperf3 -c still running {limit:.0f} s after it started"
        ) from None


def failed(f: Failure) -> dict[str, Any]:
    error = {"errno": None, "name": f.name, "message": f.message, "iteration": 0, "phase": f.phase}
    return {"metrics": {}, "series": [], "evidence": {}, "error": error, "status_detail": f.message}


def skipped(why: str) -> dict[str, Any]:
    return {
        "metrics": {},
        "series": [],
        "evidence": {},
        "error": None,
        "verdict": "skip",
        "status_detail": why,
    }


def private_scratch(fallback: str | None) -> str | None:
    """A fresh directory of our own under the temp directory (a tmpfs in a VM)."""
    try:
        return tempfile.mkdtemp(prefix="kmatrix-iperf3-")
    except OSError:
        return fallback


def main() -> int:
    out_dir = os.environ.get("KMATRIX_RESULT_DIR") or None
    try:
        duration = param("duration", 5)
        streams = param("streams", 1, MAX_STREAMS)
        if shutil.which(IPERF3) is None:
            why = "iperf3 is not installed (Debian: apt-get install iperf3); nothing measured"
            print(f"iperf3_loopback: {why}", file=sys.stderr)
            probe.write_result(skipped(why))
            return 4
        scratch = private_scratch(out_dir)
        try:
            doc = measure(duration, streams, scratch)
        finally:
            if scratch and scratch != out_dir:
                shutil.rmtree(scratch, ignore_errors=True)
    except Failure as f:
        print(f"iperf3_loopback: {f.phase}: {f.message}", file=sys.stderr)
        probe.write_result(failed(f))
        return 2
    doc["error"] = None
    print(f"iperf3_loopback: {doc['status_detail']}", file=sys.stderr)
    probe.write_result(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
