"""Options that several subcommands share, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path


def scenario_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a directory of scenarios (NAME/scenario.toml) besides the built-in ones; repeatable",
    )
