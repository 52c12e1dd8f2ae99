"""The catalogue of scenarios and of the sysctls a sweep may set.

A scenario is a name, the puzzle that runs it and what it means; the collectors
(`collectors/`) implement them. Only sysctls that are per network namespace are
allowed: a cell writes them inside its own namespace, and a global one would leak
into the machine it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    puzzle: int
    title: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("1A", 1, "send() until EAGAIN"),
        Scenario("1B", 1, "send() while poll() says POLLOUT"),
        Scenario("2A", 2, "connect/accept loop, server closes first"),
        Scenario("2B", 2, "connect/accept loop, client closes first"),
    )
}

NAMESPACED_SYSCTLS: dict[str, str] = {
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
}
"""Sysctls a sweep may set: each is per network namespace on kernels 4.15 and later."""


def scenario_names() -> tuple[str, ...]:
    return tuple(SCENARIOS)
