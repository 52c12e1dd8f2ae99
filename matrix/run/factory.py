"""What the commands build from a config: the config with its profile, the runner for
each batch, and a run's report pages. Shared by `kmatrix run` and the searches."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matrix.model import Batch
from matrix.plan import config
from matrix.results import table as results


def load_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config, tuple(getattr(args, "scenario_dir", None) or ()))
    if getattr(args, "profile", None):
        cfg = config.apply_profile(cfg, args.profile)
    return cfg


def runner_factory(cfg: config.Config) -> Any:
    """Which runner runs a batch: the host runner for the running kernel, else a VM."""
    from matrix.runners.host import HostRunner

    host = HostRunner()
    cache: dict[str, Any] = {}

    def runner_for(batch: Batch) -> Any:
        if batch.kernel.spec.kind == "host":
            return host
        if "vng" not in cache:
            from matrix.runners.agent_io import AGENT_SLACK_S
            from matrix.runners.vng import VngRunner

            s = cfg.settings
            cache["vng"] = VngRunner(
                memory_mb=s.memory_mb,
                cpus=s.cpus,
                accel=s.accel,
                boot_timeout_s=s.boot_timeout_s,
                extra_per_cell_s=AGENT_SLACK_S,
                guest_user=s.guest_user,
                boot=s.boot,
                image_cache=s.cache_dir,
            )
        return cache["vng"]

    return runner_for


def render(run_dir: Path, out: Path, runs_dir: Path | None = None) -> Path:
    """The run's report, its diff page, and the index of all runs next to it."""
    from matrix.report.history import render_history
    from matrix.report.render import render_report

    index = render_report(results.load_run(run_dir), out)
    render_history(run_dir, out, [run_dir.parent] + ([runs_dir] if runs_dir else []))
    return index
