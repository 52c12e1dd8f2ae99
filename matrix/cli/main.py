"""The `kmatrix` command: argument parsing and the one place errors become exit codes.

Exit codes:
  0   the run finished and every cell was measured (whatever the verdicts)
  1   the run finished but some cells have no measurement (infra), or, with
      `--fail-on-change [verdict|metric|any]`, a verdict (the default) or a metric
      changed against the previous comparable run (`kmatrix diff`: between the two
      runs, or the two kernels)
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
from matrix.cli.options import scenario_dir_option
from matrix.errors import ConfigError, KmatrixError
from matrix.model import Batch
from matrix.plan import cells as plan
from matrix.plan import config, hosts, shard
from matrix.results import history
from matrix.results import table as results
from matrix.run import factory, job, rundir, warm
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
    r.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N of the plan (whole kernels where it can); join with merge",
    )
    r.add_argument("--no-report", action="store_true")
    change_options(r, "the previous comparable run")
    r.set_defaults(func=cmd_run)


FAIL_ON = ("verdict", "metric", "any")


def change_options(p: argparse.ArgumentParser, against: str) -> None:
    """--fail-on-change [verdict|metric|any], and what counts as a metric change."""
    p.add_argument(
        "--fail-on-change",
        nargs="?",
        const="verdict",
        choices=FAIL_ON,
        help=f"exit 1 if a verdict (the default), a metric, or either changed against {against}",
    )
    p.add_argument(
        "--min-change",
        type=_percent,
        default=history.DEFAULT_MIN_CHANGE,
        metavar="PERCENT",
        help="a metric change smaller than this is not called (default: 5%%)",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=history.DEFAULT_ALPHA,
        help="significance level of the metric tests (default: 0.05)",
    )


def _percent(text: str) -> float:
    """'5%' or '5' -> 0.05."""
    try:
        value = float(text.strip().removesuffix("%")) / 100
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"{text!r}; expected a percentage such as 5%")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; expected a number between 0 and 1")
    return value


def _history_parsers(sub: Any) -> None:
    x = sub.add_parser("export", help="a run's results as JUnit XML, JSON lines or KCIDB")
    x.add_argument("run_dir", type=Path)
    x.add_argument("--format", choices=["junit", "jsonl", "kcidb"], required=True)
    x.add_argument("--output", type=Path, help="file to write (default: stdout)")
    x.set_defaults(func=cmd_export)
    d = sub.add_parser(
        "diff", help="what changed between two runs, or between two kernels of one run"
    )
    d.add_argument("run_a", type=Path, help="the earlier run directory")
    d.add_argument(
        "run_b", type=Path, nargs="?", help="the later run directory (default: run_a itself)"
    )
    d.add_argument(
        "--kernels",
        type=_names,
        metavar="A,B",
        help="compare kernel A (of run_a) with kernel B (of run_b, or of run_a)",
    )
    change_options(d, "the other run or kernel")
    d.set_defaults(func=cmd_diff)
    m = sub.add_parser("merge", help="join the run directories of a plan's shards into one run")
    m.add_argument("shards", nargs="+", type=Path, metavar="RUN_DIR")
    m.add_argument("--out", type=Path, required=True, help="the merged run directory (new)")
    m.add_argument("--no-report", action="store_true")
    change_options(m, "the previous comparable run")
    m.set_defaults(func=cmd_merge)


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
        if args.shard:
            why = "not with --resume: a shard's run directory holds only its own cells"
            raise ConfigError("command line", "--shard", why)
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
        specs = job.select(cfg, args.kernels)
        share = None
        if args.shard:
            part = shard.parse(args.shard)
            share, specs = shard.whole_plan(specs, cfg.sweep, cfg.catalogue, part)
        kernels, failures = job.resolve(specs, catalog)
        batches = plan.plan(kernels, cfg.sweep, cfg.catalogue)
        if share is not None:
            batches = shard.take(share, batches)
            total = share.summary["cells"]
            display.note(f"shard {share.shard.label}: {len(share.positions)} of {total} cells")
        run_dir, lock = claim_run_dir(args.out, cfg.settings.runs_dir)
        job.start_run(run_dir, batches, cfg, argv, share.to_doc() if share else None)
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
    if not batches and not failures:
        job.finish_run(run_dir, False)
        display.note(f"{run_dir}: nothing to run here (a shard beyond the plan's cells)")
        return 0
    remotes = remote_machines(cfg, run_dir, batches)
    warm.start(report=not args.no_report)
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
    changed = bool(args.fail_on_change) and _verdicts_changed(
        run_dir, cfg.settings.runs_dir, args.fail_on_change, args.min_change, args.alpha
    )
    if interrupted:
        print(f"kmatrix: interrupted; finish with: kmatrix run --resume {run_dir}", file=sys.stderr)
        return 130
    return 1 if changed or any(r["verdict"] == "infra" for r in rows) else 0


def _verdicts_changed(
    run_dir: Path,
    runs_dir: Path,
    on: str = "verdict",
    min_change: float = history.DEFAULT_MIN_CHANGE,
    alpha: float = history.DEFAULT_ALPHA,
) -> bool:
    """--fail-on-change: print the diff against the previous comparable run; True if it
    has a change of the kind asked for (verdict, metric or any)."""
    from matrix.report.history import print_diff

    runs = history.load_runs(runs_dir, run_dir.parent, run_dir)
    current = history.summarize(run_dir)
    prev = history.previous_comparable(runs, current)
    if prev is None:
        print("kmatrix: no previous comparable run; nothing to compare", file=sys.stderr)
        return False
    d = history.diff(prev, current, min_change, alpha)
    print_diff(d)
    return d.failed(on)


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
    from matrix.results import exports, kcidb

    data = results.load_run(args.run_dir)
    rows = data.table.to_dict(orient="records")
    if args.format == "junit":
        text = exports.junit_xml(rows, args.run_dir.resolve().name)
    elif args.format == "kcidb":
        text = kcidb.dumps(kcidb.document(data))
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

    a = history.summarize(args.run_a)
    b = a if args.run_b is None else history.summarize(args.run_b)
    if args.kernels:
        if len(args.kernels) != 2:
            raise ConfigError("command line", "--kernels", "expected two kernels, A,B")
        a, b = history.kernel_view(a, args.kernels[0]), history.kernel_view(b, args.kernels[1])
    elif args.run_b is None:
        raise ConfigError(
            "command line", "diff", "expected two run directories, or one with --kernels A,B"
        )
    d = history.diff(a, b, args.min_change, args.alpha)
    print_diff(d)
    return 1 if d.failed(args.fail_on_change) else 0


def cmd_merge(args: argparse.Namespace, argv: list[str]) -> int:
    """Join shards into one run directory, then its report (as `kmatrix run` would)."""
    from matrix.run import merge

    out = merge.merge(args.shards, args.out, argv)
    print(out)
    cfg = config.load(args.config)
    if not args.no_report:
        report = factory.render(out, cfg.settings.reports_dir / out.name, cfg.settings.runs_dir)
        print(report)
    changed = bool(args.fail_on_change) and _verdicts_changed(
        out, cfg.settings.runs_dir, args.fail_on_change, args.min_change, args.alpha
    )
    return 1 if changed else 0


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
