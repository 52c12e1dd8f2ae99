"""The `kmatrix` command: argument parsing and the one place errors become exit codes.

Exit codes:
  0   the run finished and every cell was measured (whatever the verdicts)
  1   the run finished but some cells have no measurement (infra), or, with
      `--fail-on-change`, a verdict differs from the previous comparable run
      (`kmatrix diff --fail-on-change`: a verdict differs between the two runs)
  2   bad input: kernels.toml, an option, a run directory
  3   a prerequisite is missing (root, namespaces, qemu, vng, ...)
  4   a kernel could not be resolved, downloaded or verified (`kernels fetch`)
  5   a runner could not run at all
  130 interrupted (Ctrl-C or SIGTERM); finished cells are kept, `run --resume DIR` goes on
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from matrix import __version__
from matrix.cli import search as search_cli
from matrix.errors import ConfigError, KmatrixError
from matrix.model import Batch
from matrix.plan import cells as plan
from matrix.plan import config, hosts
from matrix.results import table as results
from matrix.run import factory, job, rundir
from matrix.run.progress import Display


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args, ["kmatrix", *argv]))
    except KmatrixError as e:
        print(f"kmatrix: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kmatrix: interrupted", file=sys.stderr)
        return 130


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM outside a run's own handler (a download, the report) ends like Ctrl-C:
    exit 130 with cleanup, not a silent death by signal that leaves partial files."""
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmatrix",
        description="Linux TCP puzzles across kernels.",
        epilog="Exit codes: see `kmatrix help-exit-codes` or README.",
    )
    p.add_argument("--version", action="version", version=f"kmatrix {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="kernels.toml to use (default: ./kernels.toml, else the packaged one)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    r = sub.add_parser("report", help="render the HTML report of a run")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--out", type=Path, default=None, help="default: <reports_dir>/<run-id>")
    r.set_defaults(func=cmd_report)
    k = sub.add_parser("kernels", help="list kernels; `kernels fetch` downloads them")
    k.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    k.add_argument("names", nargs="*", help="kernel names (default: all)")
    k.add_argument("--refresh", action="store_true", help="re-resolve the newest build")
    k.set_defaults(func=cmd_kernels)
    s = sub.add_parser("results", help="print a run's results")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--json", action="store_true", help="one JSON object per line per cell")
    s.set_defaults(func=cmd_results)
    _history_parsers(sub)
    search_cli.add_parsers(sub)
    c = sub.add_parser(
        "scenarios", help="list the scenarios, where each comes from, its parameters"
    )
    scenario_dir_option(c)
    c.add_argument("--json", action="store_true", help="one JSON object per scenario")
    c.set_defaults(func=cmd_scenarios)
    e = sub.add_parser("help-exit-codes", help="what each exit code means")
    e.set_defaults(func=lambda a, v: print(__doc__.split("Exit codes:")[1]) or 0)
    return p


def _run_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run the matrix and write the report")
    r.add_argument("--kernels", type=_names, help="comma-separated kernel names (default: all)")
    r.add_argument(
        "--scenarios", type=_names, help="comma-separated names (see `kmatrix scenarios`)"
    )
    scenario_dir_option(r)
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=V[,V...]",
        help="a scenario parameter's values (repeatable; a list is a sweep axis)",
    )
    r.add_argument(
        "--baseline",
        metavar="KERNEL",
        help="the kernel that scenarios' baseline rules compare with",
    )
    r.add_argument("--profile", help="a [profiles.NAME] of kernels.toml, e.g. quick or full")
    r.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=V[,V...]",
        help="sweep exactly these values (repeatable); replaces the config's sweep",
    )
    r.add_argument("--trials", type=int)
    r.add_argument(
        "--window",
        type=float,
        help="seconds, the safety limit of a puzzle-2 cell (it ends at its goal past the knee)",
    )
    r.add_argument("--cap", type=int, help="iteration cap of a puzzle-2 cell")
    r.add_argument("--stall", type=float, help="seconds without progress that count as a hang")
    r.add_argument(
        "--collapse", type=float, help="stop a loop this long below a tenth of its best rate"
    )
    r.add_argument(
        "--knee-margin", type=int, help="a cell's goal: this many connections past the knee"
    )
    r.add_argument(
        "--knee-margin-s", type=float, help="a cell's goal: this many seconds past the knee"
    )
    r.add_argument(
        "--jobs", type=int, help="VMs at once here (default: fit the machine; 0: only --hosts)"
    )
    r.add_argument(
        "--hosts",
        metavar="USER@HOST[:PORT],...",
        help="SSH hosts that take batches too (replaces the config's [[host]] tables)",
    )
    r.add_argument("--host-capacity", type=int, default=1, help="batches at once per --hosts host")
    r.add_argument("--accel", choices=["auto", "kvm", "tcg"])
    r.add_argument(
        "--guest-user",
        metavar="NAME",
        help="run QEMU as this user, so guests read this machine with its rights only",
    )
    r.add_argument("--out", type=Path, help="run directory (default: <runs_dir>/<run-id>)")
    r.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="run only the cells of RUN_DIR that have no result",
    )
    r.add_argument("--no-report", action="store_true")
    r.add_argument(
        "--fail-on-change",
        action="store_true",
        help="exit 1 if a verdict differs from the previous comparable run",
    )
    r.set_defaults(func=cmd_run)


def _history_parsers(sub: Any) -> None:
    x = sub.add_parser("export", help="a run's results as JUnit XML or JSON lines")
    x.add_argument("run_dir", type=Path)
    x.add_argument("--format", choices=["junit", "jsonl"], required=True)
    x.add_argument("--output", type=Path, help="file to write (default: stdout)")
    x.set_defaults(func=cmd_export)
    d = sub.add_parser("diff", help="what changed between two runs")
    d.add_argument("run_a", type=Path, help="the earlier run directory")
    d.add_argument("run_b", type=Path, help="the later run directory")
    d.add_argument("--fail-on-change", action="store_true", help="exit 1 if a verdict changed")
    d.set_defaults(func=cmd_diff)


def scenario_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a directory of scenarios (NAME/scenario.toml) besides the built-in ones; repeatable",
    )


def cmd_scenarios(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = factory.load_config(args)
    if args.json:
        for s in cfg.catalogue.scenarios:
            print(json.dumps(s.to_doc(), sort_keys=True))
        return 0
    Display().scenarios_table(cfg.catalogue.scenarios)
    return 0


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def effective(cfg: config.Config, args: argparse.Namespace) -> config.Config:
    """The config with the run's command-line options laid over it, validated the same way."""
    sw = cfg.sweep
    overrides: dict[str, Any] = {}
    if args.scenarios:
        overrides["scenarios"] = args.scenarios
    if args.sysctl:
        overrides["sysctls"] = {k: list(v) for k, v in job.parse_sysctl_options(args.sysctl)}
        fixed = {k: v for k, v in sw.fixed if k not in overrides["sysctls"]}
        overrides["fixed"] = fixed
        overrides["swept_scenarios"] = list(args.scenarios or sw.scenarios)
    if args.param:
        given = job.parse_sysctl_options(args.param, "--param", "duration=5,10")
        overrides["params"] = {k: list(v) for k, v in given}
    if args.baseline:
        if args.baseline not in {k.name for k in cfg.kernels}:
            known = ", ".join(k.name for k in cfg.kernels)
            raise ConfigError(
                "command line", "--baseline", f"{args.baseline!r}; expected one of {known}"
            )
        overrides["baseline"] = args.baseline
    for opt, key in (
        ("trials", "trials"),
        ("window", "window_s"),
        ("cap", "iteration_cap"),
        ("stall", "stall_s"),
        ("collapse", "collapse_s"),
        ("knee_margin", "knee_margin"),
        ("knee_margin_s", "knee_margin_s"),
    ):
        if getattr(args, opt) is not None:
            overrides[key] = getattr(args, opt)
    if overrides:
        cfg = replace(
            cfg, sweep=config.sweep_from("command line", "option", overrides, sw, cfg.catalogue)
        )
    settings = cfg.settings
    if args.hosts:
        cfg = replace(cfg, hosts=hosts.from_option(args.hosts, args.host_capacity, None))
    if args.jobs is not None:
        least = 0 if cfg.hosts else 1
        if args.jobs < least:
            expected = f"an integer >= {least}" + (" (0 needs --hosts)" if least else "")
            raise ConfigError("command line", "--jobs", f"{args.jobs}; expected {expected}")
        settings = replace(settings, jobs=args.jobs or settings.jobs)
    if args.accel:
        settings = replace(settings, accel=args.accel)
    if getattr(args, "guest_user", None):
        name = config.guest_user("command line", "--guest-user", args.guest_user)
        settings = replace(settings, guest_user=name)
    return replace(cfg, settings=settings)


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = effective(factory.load_config(args), args)
    display = Display()
    if args.resume:
        run_dir = args.resume.resolve()
        saved = plan.from_doc(rundir.read_json(run_dir / "plan.json"))
        lock = rundir.lock_run(run_dir)
        batches = job.pending(saved, run_dir)
        failures: dict[str, str] = {}
        display.note(f"resuming {run_dir}: {sum(len(b.cells) for b in batches)} cells left")
    else:
        from matrix.kernels.catalog import Catalog

        catalog = Catalog(
            cfg.settings.cache_dir,
            cfg.settings.mirror,
            cfg.settings.security_mirror,
            progress=display.download,
            allow_unverified=cfg.settings.allow_unverified,
        )
        kernels, failures = job.resolve(job.select(cfg, args.kernels), catalog)
        batches = plan.plan(kernels, cfg.sweep, cfg.catalogue)
        run_dir, lock = claim_run_dir(args.out, cfg.settings.runs_dir)
        job.start_run(run_dir, batches, cfg, argv)
    with lock:
        return _run_claimed(args, cfg, display, run_dir, batches, failures)


def claim_run_dir(out: Path | None, runs_dir: Path) -> tuple[Path, rundir.RunLock]:
    """`--out` as given, or a new directory of its own under runs_dir; locked either way,
    so a second run on the same directory is refused while this one lives."""
    if out is None:
        run_dir = rundir.create_run_dir(runs_dir.resolve())
    else:
        run_dir = out.resolve()
        rundir.check_writable(run_dir)
    return run_dir, rundir.lock_run(run_dir)


def _run_claimed(
    args: argparse.Namespace,
    cfg: config.Config,
    display: Display,
    run_dir: Path,
    batches: list[Batch],
    failures: dict[str, str],
) -> int:
    """The run itself, in a directory this process holds the lock of."""
    runner_for = factory.runner_factory(cfg)
    jobs = 0 if args.jobs == 0 else job.auto_jobs(cfg)
    if jobs:
        job.check_runners(batches, runner_for, failures)
    remotes = remote_machines(cfg, run_dir, batches)
    display.start(
        run_dir, batches, failures, {k for k, _ in cfg.sweep.fixed}, job.run_scenarios(run_dir)
    )
    with display:
        interrupted = job.execute(
            batches, runner_for, run_dir, jobs, display.event, failures, remotes
        )
    rows = job.finish_run(run_dir, interrupted)
    reports = cfg.settings.reports_dir / run_dir.name
    report = None if args.no_report else factory.render(run_dir, reports, cfg.settings.runs_dir)
    display.summary(rows, run_dir, report)
    changed = args.fail_on_change and _verdicts_changed(run_dir, cfg.settings.runs_dir)
    if interrupted:
        print(f"kmatrix: interrupted; finish with: kmatrix run --resume {run_dir}", file=sys.stderr)
        return 130
    return 1 if changed or any(r["verdict"] == "infra" for r in rows) else 0


def _verdicts_changed(run_dir: Path, runs_dir: Path) -> bool:
    """--fail-on-change: print the diff against the previous comparable run; True if any."""
    from matrix.report.history import print_diff
    from matrix.results import history

    runs = history.load_runs(runs_dir, run_dir.parent, run_dir)
    current = history.summarize(run_dir)
    prev = history.previous_comparable(runs, current)
    if prev is None:
        print("kmatrix: no previous comparable run; nothing to compare", file=sys.stderr)
        return False
    d = history.diff(prev, current)
    print_diff(d)
    return d.verdicts_changed


def remote_machines(cfg: config.Config, run_dir: Path, batches: list[Batch]) -> list[Any]:
    """The SSH hosts as scheduler machines, each checked before anything starts."""
    if not cfg.hosts:
        return []
    from matrix.runners import remote

    need_vm = any(b.kernel.spec.kind != "host" for b in batches)
    return remote.machines(cfg.hosts, cfg.settings, run_dir.name, need_vm)


def cmd_report(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config.load(args.config) if args.out is None else None
    out = args.out or cfg.settings.reports_dir / args.run_dir.name  # type: ignore[union-attr]
    print(factory.render(args.run_dir, out, cfg.settings.runs_dir if cfg else None))
    return 0


def cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    from matrix.results import exports

    rows = results.load_run(args.run_dir).table.to_dict(orient="records")
    if args.format == "junit":
        text = exports.junit_xml(rows, args.run_dir.resolve().name)
    else:
        text = exports.jsonl(rows)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise KmatrixError(f"{args.output}: cannot write ({e.strerror})") from None
    print(args.output, file=sys.stderr)
    return 0


def cmd_diff(args: argparse.Namespace, argv: list[str]) -> int:
    from matrix.report.history import print_diff
    from matrix.results import history

    d = history.diff(history.summarize(args.run_a), history.summarize(args.run_b))
    print_diff(d)
    return 1 if args.fail_on_change and d.verdicts_changed else 0


def cmd_results(args: argparse.Namespace, argv: list[str]) -> int:
    data = results.load_run(args.run_dir)
    rows = data.table.to_dict(orient="records")
    if args.json:
        for line in results.json_lines(rows):
            print(line)
        return 0
    Display().results_table(rows)
    return 0


def cmd_kernels(args: argparse.Namespace, argv: list[str]) -> int:
    from matrix.kernels.catalog import Catalog

    cfg = factory.load_config(args)
    display = Display()
    catalog = Catalog(
        cfg.settings.cache_dir,
        cfg.settings.mirror,
        cfg.settings.security_mirror,
        progress=display.download,
        allow_unverified=cfg.settings.allow_unverified,
    )
    specs = job.select(cfg, args.names or None)
    if args.action == "fetch":
        for spec in specs:
            k = catalog.fetch(spec, refresh=args.refresh)
            display.note(f"{spec.name}: {k.release} ({k.package_version or spec.kind}) ready")
        return 0
    display.kernels_table(specs, catalog)
    return 0
