"""The `kmatrix threshold` and `kmatrix bisect` commands: options in, a search run out.

Kept apart from `matrix.cli.main` so the matrix command stays as it is; both reuse the config
loading, runner choice and report rendering of `matrix.run.factory`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from matrix.cli.options import scenario_dir_option
from matrix.errors import CatalogError, ConfigError
from matrix.kernels.catalog import Catalog
from matrix.model import Batch, Limits
from matrix.plan.config import Config
from matrix.run import factory, job, rundir
from matrix.run.rounds import Rounds
from matrix.scenarios.manifest import SYSCTL
from matrix.search import bisect
from matrix.search import threshold as th
from matrix.search.threshold_run import (
    Search,
    parse_range,
    run_search,
    summary_lines,
)


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("threshold", help="find where a sysctl's value flips the verdict")
    _common(t)
    t.add_argument("--sysctl", required=True, metavar="KEY", help="the integer sysctl searched")
    t.add_argument("--range", required=True, type=parse_range, metavar="LO:HI")
    t.add_argument("--kernels", help="comma-separated kernel names (default: host)")
    t.add_argument("--points", type=int, default=4, help="probes per round (default 4)")
    t.add_argument("--resolution", type=int, help="stop below this width (default: range/100)")
    t.add_argument("--max-rounds", type=int, default=8)
    t.add_argument(
        "--fixed", action="append", default=[], metavar="KEY=VALUE", help="set in every probe"
    )
    t.set_defaults(func=cmd_threshold)
    b = sub.add_parser("bisect", help="the first Debian build whose verdict differs")
    _common(b)
    b.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--good", required=True, metavar="KERNEL[@VERSION]")
    b.add_argument("--bad", required=True, metavar="KERNEL[@VERSION]")
    b.add_argument("--list", action="store_true", help="only list the candidate builds")
    b.set_defaults(func=cmd_bisect)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        default="2B",
        help="the scenario probed (default 2B; see `kmatrix scenarios`)",
    )
    scenario_dir_option(p)
    p.add_argument("--trials", type=int, default=1, help="per probe; the majority decides")
    p.add_argument(
        "--window",
        type=float,
        help="seconds, the safety limit of a puzzle-2 cell (it ends at its goal past the knee)",
    )
    p.add_argument("--cap", type=int, help="iteration cap of a puzzle-2 cell")
    p.add_argument("--stall", type=float, help="seconds without progress that count as a hang")
    p.add_argument("--jobs", type=int, help="VMs at once (default: fit the machine)")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"])
    p.add_argument("--out", type=Path, help="run directory (default: <runs_dir>/<run-id>)")
    p.add_argument("--no-report", action="store_true")


def _limits(cfg: Config, args: argparse.Namespace) -> Limits:
    lim = cfg.sweep.limits
    return replace(
        lim,
        window_s=args.window if args.window is not None else lim.window_s,
        iteration_cap=args.cap if args.cap is not None else lim.iteration_cap,
        stall_s=args.stall if args.stall is not None else lim.stall_s,
    )


def _pairs(options: list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE options; each key a sysctl name (where it may be set is checked at plan)."""
    out = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or not SYSCTL.fullmatch(key.strip()):
            raise ConfigError("command line", f"{flag} {opt}", "expected SYSCTL_KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _held(cfg: Config, scenario: str) -> dict[str, str]:
    """The sweep's fixed sysctls plus what the scenario's manifest holds fixed in a search."""
    fixed = dict(cfg.sweep.fixed)
    own = cfg.catalogue.get(scenario, "command line", "--scenario").search_fixed
    fixed.update({k: v for k, v in own if k not in fixed})
    return fixed


def _setup(args: argparse.Namespace) -> tuple[Config, Catalog, Path]:
    cfg = factory.load_config(args)
    if args.accel:
        cfg = replace(cfg, settings=replace(cfg.settings, accel=args.accel))
    if args.jobs is not None:
        cfg = replace(cfg, settings=replace(cfg.settings, jobs=max(1, args.jobs)))
    s = cfg.settings
    catalog = Catalog(s.cache_dir, s.mirror, s.security_mirror, allow_unverified=s.allow_unverified)
    run_dir = (args.out or s.runs_dir / rundir.new_run_id()).resolve()
    return cfg, catalog, run_dir


def _search(cfg: Config, args: argparse.Namespace) -> Search:
    key = args.sysctl
    if not SYSCTL.fullmatch(key):
        expected = "not a sysctl name; expected dotted words like net.ipv4.tcp_max_tw_buckets"
        raise ConfigError("command line", f"--sysctl {key}", expected)
    lo, hi = args.range
    if problem := th.check_range(key, lo, hi):
        raise ConfigError("command line", f"--range {lo}:{hi}", problem)
    fixed = _held(cfg, args.scenario)
    fixed.update(_pairs(args.fixed, "--fixed"))
    fixed.pop(key, None)
    resolution = args.resolution or max(1, (hi - lo) // 100)
    return Search(
        args.scenario,
        key,
        lo,
        hi,
        max(1, args.points),
        max(1, args.trials),
        resolution,
        max(1, args.max_rounds),
        tuple(fixed.items()),
        _limits(cfg, args),
    )


def cmd_threshold(args: argparse.Namespace, argv: list[str]) -> int:
    cfg, catalog, run_dir = _setup(args)
    search = _search(cfg, args)
    names = [n.strip() for n in (args.kernels or "host").split(",") if n.strip()]
    kernels, failures = job.resolve(job.select(cfg, names), catalog)
    if failures:
        raise CatalogError("; ".join(failures.values()))
    runner_for = factory.runner_factory(cfg)
    job.check_runners([Batch(k, ()) for k in kernels], runner_for, {})
    keys = tuple(k for k, _ in search.fixed)
    rounds = Rounds(run_dir, cfg, runner_for, job.auto_jobs(cfg), fixed_keys=keys)
    rounds.start(kernels, argv)
    state = run_search(search, rounds)
    return _finish(
        cfg, args, rounds, summary_lines(state), any(not s.probes for s in state.values())
    )


def cmd_bisect(args: argparse.Namespace, argv: list[str]) -> int:
    cfg, catalog, run_dir = _setup(args)
    (gname, gver), (bname, bver) = bisect.split_ref(args.good), bisect.split_ref(args.bad)
    pools = {n: bisect.family_builds(catalog, cfg.kernel(n)) for n in {gname, bname}}
    good = bisect.pick(pools[gname], gver, args.good)
    bad = bisect.pick(pools[bname], bver, args.bad)
    builds = bisect.candidates(good, bad, [b for p in pools.values() for b in p])
    for i, b in enumerate(builds):
        print(f"{i:3d}  {b.resolution.package}  {b.version}  ({b.resolution.image.suite})")
    if note := bisect.thin_note(builds):
        print(f"kmatrix: {note}", file=sys.stderr)
    if args.list:
        return 0
    limits = _limits(cfg, args)
    fixed = _held(cfg, args.scenario)
    fixed.update(_pairs(args.sysctl, "--sysctl"))
    bis = bisect.Bisection(builds, args.scenario, tuple(fixed.items()), max(1, args.trials), limits)
    runner_for = factory.runner_factory(cfg)
    rounds = Rounds(run_dir, cfg, runner_for, 1, fixed_keys=tuple(fixed))
    rounds.start([], argv)
    bisect.run_bisection(bis, rounds, catalog)
    lines = [f"{s['index']:3d}  {s['version']}: {s['label']}" for s in bis.steps]
    return _finish(cfg, args, rounds, [*lines, bis.result], bis.good_label in ("tie", "infra"))


def _finish(
    cfg: Config, args: argparse.Namespace, rounds: Rounds, lines: list[str], incomplete: bool
) -> int:
    """Close the run, render its report, print the answer; the exit code says how it went."""
    rounds.finish()
    run_dir = rounds.run_dir
    report = None
    if not args.no_report:
        report = factory.render(
            run_dir, cfg.settings.reports_dir / run_dir.name, cfg.settings.runs_dir
        )
    for line in lines:
        print(line)
    print(f"run: {run_dir}" + (f"\nreport: {report}" if report else ""), file=sys.stderr)
    if rounds.stop.is_set():
        return 130
    return 1 if incomplete else 0
