"""The `kmatrix` command: argument parsing and the one place errors become exit codes.

Exit codes:
  0   the run finished and every cell was measured (whatever the verdicts)
  1   the run finished but some cells have no measurement (infra)
  2   bad input: kernels.toml, an option, a run directory
  3   a prerequisite is missing (root, namespaces, qemu, vng, ...)
  4   a kernel could not be resolved, downloaded or verified (`kernels fetch`)
  5   a runner could not run at all
  130 interrupted (Ctrl-C or SIGTERM); finished cells are kept, `run --resume DIR` goes on
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from matrix import __version__, config, job, plan, results, rundir
from matrix.errors import ConfigError, KmatrixError
from matrix.model import Batch
from matrix.progress import Display
from matrix.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        return int(args.func(args, ["kmatrix", *argv]))
    except KmatrixError as e:
        print(f"kmatrix: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kmatrix: interrupted", file=sys.stderr)
        return 130


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
    e = sub.add_parser("help-exit-codes", help="what each exit code means")
    e.set_defaults(func=lambda a, v: print(__doc__.split("Exit codes:")[1]) or 0)
    return p


def _run_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run the matrix and write the report")
    r.add_argument("--kernels", type=_names, help="comma-separated kernel names (default: all)")
    r.add_argument("--scenarios", type=_names, help=f"comma-separated, of {', '.join(SCENARIOS)}")
    r.add_argument("--profile", help="a [profiles.NAME] of kernels.toml, e.g. quick or full")
    r.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=V[,V...]",
        help="sweep exactly these values (repeatable); replaces the config's sweep",
    )
    r.add_argument("--trials", type=int)
    r.add_argument("--window", type=float, help="seconds, upper bound of a puzzle-2 cell")
    r.add_argument("--cap", type=int, help="iteration cap of a puzzle-2 cell")
    r.add_argument("--stall", type=float, help="seconds without progress that count as a hang")
    r.add_argument("--jobs", type=int, help="VMs at once (default: fit the machine)")
    r.add_argument("--accel", choices=["auto", "kvm", "tcg"])
    r.add_argument("--out", type=Path, help="run directory (default: <runs_dir>/<run-id>)")
    r.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="run only the cells of RUN_DIR that have no result",
    )
    r.add_argument("--no-report", action="store_true")
    r.set_defaults(func=cmd_run)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def load_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config)
    if getattr(args, "profile", None):
        cfg = config.apply_profile(cfg, args.profile)
    return cfg


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
    for opt, key in (
        ("trials", "trials"),
        ("window", "window_s"),
        ("cap", "iteration_cap"),
        ("stall", "stall_s"),
    ):
        if getattr(args, opt) is not None:
            overrides[key] = getattr(args, opt)
    if overrides:
        cfg = replace(cfg, sweep=config.sweep_from("command line", "option", overrides, sw))
    settings = cfg.settings
    if args.jobs is not None:
        if args.jobs < 1:
            raise ConfigError("command line", "--jobs", f"{args.jobs}; expected an integer >= 1")
        settings = replace(settings, jobs=args.jobs)
    if args.accel:
        settings = replace(settings, accel=args.accel)
    return replace(cfg, settings=settings)


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = effective(load_config(args), args)
    display = Display()
    if args.resume:
        run_dir = args.resume
        batches = job.pending(plan.from_doc(rundir.read_json(run_dir / "plan.json")), run_dir)
        failures: dict[str, str] = {}
        display.note(f"resuming {run_dir}: {sum(len(b.cells) for b in batches)} cells left")
    else:
        from matrix.catalog import Catalog

        catalog = Catalog(
            cfg.settings.cache_dir,
            cfg.settings.mirror,
            cfg.settings.security_mirror,
            progress=display.download,
        )
        kernels, failures = job.resolve(job.select(cfg, args.kernels), catalog)
        batches = plan.plan(kernels, cfg.sweep)
        run_dir = args.out or cfg.settings.runs_dir / rundir.new_run_id()
        job.start_run(run_dir, batches, cfg, argv)
    runner_for = runner_factory(cfg)
    job.check_runners(batches, runner_for, failures)
    display.start(run_dir, batches, failures, {k for k, _ in cfg.sweep.fixed})
    with display:
        interrupted = job.execute(
            batches, runner_for, run_dir, job.auto_jobs(cfg), display.event, failures
        )
    rows = job.finish_run(run_dir, interrupted)
    report = None if args.no_report else _render(run_dir, cfg.settings.reports_dir / run_dir.name)
    display.summary(rows, run_dir, report)
    if interrupted:
        print(f"kmatrix: interrupted; finish with: kmatrix run --resume {run_dir}", file=sys.stderr)
        return 130
    return 1 if any(r["verdict"] == "infra" for r in rows) else 0


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
                repo_root=Path(__file__).resolve().parent.parent,
                memory_mb=s.memory_mb,
                cpus=s.cpus,
                accel=s.accel,
                boot_timeout_s=s.boot_timeout_s,
                extra_per_cell_s=AGENT_SLACK_S,
            )
        return cache["vng"]

    return runner_for


def _render(run_dir: Path, out: Path) -> Path:
    from matrix.report import render_report

    return render_report(results.load_run(run_dir), out)


def cmd_report(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config.load(args.config) if args.out is None else None
    out = args.out or cfg.settings.reports_dir / args.run_dir.name  # type: ignore[union-attr]
    print(_render(args.run_dir, out))
    return 0


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
    from matrix.catalog import Catalog

    cfg = load_config(args)
    display = Display()
    catalog = Catalog(
        cfg.settings.cache_dir,
        cfg.settings.mirror,
        cfg.settings.security_mirror,
        progress=display.download,
    )
    specs = job.select(cfg, args.names or None)
    if args.action == "fetch":
        for spec in specs:
            k = catalog.fetch(spec, refresh=args.refresh)
            display.note(f"{spec.name}: {k.release} ({k.package_version or spec.kind}) ready")
        return 0
    display.kernels_table(specs, catalog)
    return 0
