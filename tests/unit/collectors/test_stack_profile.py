"""The loop's kernel stacks, sampled while it runs, become a per-phase profile; a stack on
the exit path is never taken for the loop's own."""

from __future__ import annotations

from tests.fixtures.agent_cells import COLLECTORS, load_collector

probe = load_collector(COLLECTORS / "kmatrix_probe.py")

CRAWL = (
    "[<0>] __inet_hash_connect+0x2b4/0x4c0\n"
    "[<0>] tcp_v4_connect+0x3e1/0x540\n"
    "[<0>] __inet_stream_connect+0x10e/0x3f0\n"
    "[<0>] __sys_connect+0x9c/0xd0\n"
)
EXIT = "[<0>] exit_mmap+0x1c2/0x3a0\n[<0>] do_exit+0x2f1/0xaf0\n"


def test_frames_are_function_names_leaf_first() -> None:
    assert probe.frames(CRAWL)[:2] == ["__inet_hash_connect", "tcp_v4_connect"]
    assert probe.frames("error: Permission denied") == []
    assert probe.frames("") == []
    assert probe.exiting(EXIT) and not probe.exiting(CRAWL)


def test_the_profile_counts_leaf_and_inclusive_shares_per_phase() -> None:
    p = probe.StackProfile()
    for _ in range(3):
        p.add("past_knee", CRAWL, "R")
    p.add("past_knee", "[<0>] __fput+0x9/0x20\n[<0>] __sys_connect+0x9c/0xd0\n", "R")
    p.add("past_knee", "", "R")
    p.add("before_knee", "[<0>] exit_to_user_mode_loop+0x1/0x2\n", "R")
    s = p.summary()
    past = s["past_knee"]
    assert (past["samples"], past["empty"]) == (5, 1)
    assert past["leaf"] == {"__inet_hash_connect": 3, "__fput": 1}
    assert past["inclusive"]["__sys_connect"] == 4
    assert s["before_knee"]["leaf"] == {"exit_to_user_mode_loop": 1}
