"""The monitor sleeps between samples and is woken by the child's exit, not by polling:
a loop that ends between two samples is seen ending at once, with a last sample."""

from __future__ import annotations

import os
import signal
import time

from tests.fixtures.agent_cells import COLLECTORS, load_collector

probe = load_collector(COLLECTORS / "kmatrix_probe.py")


def test_a_child_ending_between_samples_ends_the_watch_before_the_next(tmp_path) -> None:
    shared = probe.Shared(4)
    pid = probe.spawn(lambda: time.sleep(0.2))
    watch = probe.Watch(pid, shared, stall_s=600.0)
    started = time.monotonic()
    reason = probe.watch_until(watch, window_s=600.0, sample_s=60.0)
    took = time.monotonic() - started
    os.waitpid(pid, 0)
    assert reason is None
    assert took < 30.0, f"the exit waited for the next sample ({took:.1f} s)"
    assert len(watch.series) == 2
    assert signal.SIGCHLD not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    shared.close()
