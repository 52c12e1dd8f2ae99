"""Which sysctls a cell may set, and where.

Inside a VM any sysctl may be swept: the guest is thrown away after its batch. On a
machine that is not thrown away (the host row, a remote host's own kernel) only `net.*`
keys may be, and only those that stay inside the cell's network namespace: from a
non-initial namespace the kernel shows only the per-namespace `net.*` tables, and the
agent's leak check re-reads every key in its own namespace after each cell to prove it.
"""

from __future__ import annotations

from matrix.errors import ConfigError

KNOWN: dict[str, str] = {
    "net.ipv4.tcp_max_tw_buckets": "TIME-WAIT sockets kept before new ones are dropped",
    "net.ipv4.tcp_tw_reuse": "reuse a TIME-WAIT port for outgoing connections (0, 1, 2=loopback)",
    "net.ipv4.tcp_tw_reuse_delay": "ms a TIME-WAIT socket must age before reuse (6.13+)",
    "net.ipv4.ip_local_port_range": "ephemeral ports connect() picks from",
    "net.ipv4.tcp_timestamps": "TCP timestamps, which tw_reuse depends on",
    "net.ipv4.tcp_fin_timeout": "FIN-WAIT-2 timeout",
    "net.ipv4.tcp_wmem": "min/default/max send buffer",
    "net.ipv4.tcp_rmem": "min/default/max receive buffer",
    "net.ipv4.tcp_notsent_lowat": "unsent bytes above which POLLOUT is withheld",
    "net.ipv4.tcp_autocorking": "coalesce small writes",
    "net.ipv4.tcp_congestion_control": "the congestion control algorithm of new sockets",
}
"""Sysctls these scenarios sweep, with what they do (for help texts); any other is allowed."""

HOST_PREFIX = "net."


def host_safe(key: str) -> bool:
    """True if a cell on a kept machine may set `key` (see the module docstring)."""
    return key.startswith(HOST_PREFIX)


def check_host_cells(where: str, kernel: str, keys: set[str]) -> None:
    """Refuse, before anything runs, a sysctl that would outlive a cell on a kept machine."""
    bad = sorted(k for k in keys if not host_safe(k))
    if bad:
        raise ConfigError(
            where,
            bad[0],
            f"kernel {kernel!r} runs on this machine (no VM), where a cell may only set "
            f"{HOST_PREFIX}* sysctls, which stay inside its network namespace; "
            "run it on a VM kernel, where any sysctl may be swept",
        )
