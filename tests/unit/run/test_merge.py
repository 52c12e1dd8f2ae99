"""`kmatrix merge`: shards of a recorded run joined back into one run directory, and the
shards it refuses, each with one line naming the directory and what differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.errors import KmatrixError
from matrix.model import HostSource, KernelSpec, ResolvedKernel, Sweep
from matrix.plan import cells as plan
from matrix.results import history
from matrix.results import table as results
from matrix.run import job, merge, rundir

RECORDED = Path(__file__).parents[2] / "fixtures" / "run_host_recorded"


def make_shards(root: Path, count: int, source: Path = RECORDED) -> list[Path]:
    """The recorded run cut into `count` shards as `run --shard` leaves them: every shard
    ran part of the one kernel (so each has batches/host.json and console/host.log)."""
    whole = rundir.read_json(source / "plan.json")
    man = rundir.read_json(source / "manifest.json")
    summary = {
        "kernels": [k["name"] for k in whole["kernels"]],
        "scenarios": list(dict.fromkeys(c["scenario"] for c in whole["cells"])),
        "cells": len(whole["cells"]),
    }
    out = []
    for i in range(1, count + 1):
        run = root / f"shard{i}"
        positions = [p for p in range(len(whole["cells"])) if p % count == i - 1]
        cells = [whole["cells"][p] for p in positions]
        (run / "cells").mkdir(parents=True)
        for c in cells:
            shutil.copyfile(source / "cells" / f"{c['id']}.json", run / "cells" / f"{c['id']}.json")
        shutil.copytree(source / "batches", run / "batches")
        if (source / "console").is_dir():
            shutil.copytree(source / "console", run / "console")
        rundir.write_json(run / "plan.json", dict(whole, cells=cells))
        shard = {
            "index": i,
            "count": count,
            "plan_digest": "d" * 64,
            "plan": summary,
            "pieces": [["host", i - 1, count]],
            "positions": positions,
        }
        started = f"2026-11-28T02:17:{29 + i:02d}+00:00"
        doc = dict(man, run_id=f"shard{i}", shard=shard, started_at=started, host=f"ci{i}")
        rundir.write_json(run / "manifest.json", doc)
        out.append(run)
    return out


def rows(run: Path) -> list[tuple]:
    table = results.load_run(run).table.to_dict(orient="records")
    return [(r["cell_id"], r["verdict"], r["reason"], r["key_figure"]) for r in table]


def test_merged_shards_are_the_run_they_were_cut_from(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    out = merge.merge(list(reversed(shards)), tmp_path / "merged", ["kmatrix", "merge"])
    assert rows(out) == rows(RECORDED)
    doc = rundir.read_json(out / "plan.json")
    assert [c["id"] for c in doc["cells"]] == [
        c["id"] for c in rundir.read_json(RECORDED / "plan.json")["cells"]
    ]
    assert sorted(p.name for p in (out / "batches").iterdir()) == ["host+s2.json", "host.json"]
    second = rundir.read_json(out / "batches" / "host+s2.json")
    assert (
        second["console_log"] == "console/host+s2.log" and (out / second["console_log"]).is_file()
    )
    man = rundir.read_json(out / "manifest.json")
    assert man["run_id"] == "merged" and "shard" not in man
    assert man["started_at"] == "2026-11-28T02:17:30+00:00" and man["host"] == "ci1, ci2"
    assert [s["index"] for s in man["shards"]] == [1, 2]
    assert (out / "results.jsonl").is_file() and (out / "results.junit.xml").is_file()


def test_cells_of_the_second_shard_show_its_own_batch(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    batch = rundir.read_json(shards[1] / "batches" / "host.json")
    rundir.write_json(shards[1] / "batches" / "host.json", dict(batch, host="other-machine"))
    out = merge.merge(shards, tmp_path / "merged", [])
    table = results.load_run(out).table.to_dict(orient="records")
    hosts = [r["host"] for r in table]
    assert hosts == ["vm", "other-machine"] * 3


def test_commands_treat_a_merged_run_like_any_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = merge.merge(make_shards(tmp_path, 3), tmp_path / "merged", [])
    capsys.readouterr()
    assert cli.main(["results", str(out), "--json"]) == 0
    got = [json.loads(line)["cell_id"] for line in capsys.readouterr().out.splitlines()]
    assert got == [r[0] for r in rows(RECORDED)]
    for fmt in ("junit", "jsonl", "kcidb"):
        assert cli.main(["export", str(out), "--format", fmt, "--output", str(tmp_path / fmt)]) == 0
    assert cli.main(["diff", str(RECORDED), str(out), "--fail-on-change", "any"]) == 0
    assert "0 verdicts changed" in capsys.readouterr().out
    d = history.diff(history.summarize(RECORDED), history.summarize(out))
    assert d.empty and d.unchanged == 6


def planned_run(root: Path) -> Path:
    """A run planned by this version (so `--resume` recomputes the same cell ids), 1A and
    1B with two trials on the host kernel, every cell measured."""
    kernel = ResolvedKernel(KernelSpec("host", HostSource()), "6.18.44")
    batches = plan.plan([kernel], Sweep(("1A", "1B"), (), trials=2))
    run = root / "planned"
    rundir.write_json(run / "plan.json", plan.to_doc(batches, ()))
    for c in batches[0].cells:
        doc = {
            "cell_id": c.id,
            "scenario": c.scenario,
            "status": "ok",
            "kernel_release": "6.18.44",
            "metrics": {"bytes_queued": 4_000_000, "sends": 200},
        }
        rundir.write_json(run / "cells" / f"{c.id}.json", doc)
    rundir.write_json(run / "batches" / "host.json", {"runner": "host", "failure": ""})
    rundir.write_json(run / "manifest.json", {"run_id": "planned", "started_at": ""})
    return run


def test_resume_of_a_merged_run_runs_only_what_has_no_result(tmp_path: Path) -> None:
    source = planned_run(tmp_path)
    out = merge.merge(make_shards(tmp_path, 2, source), tmp_path / "merged", [])
    assert rows(out) == rows(source)
    saved = plan.from_doc(rundir.read_json(out / "plan.json"))
    assert job.pending(saved, out) == []
    gone = rundir.read_json(out / "plan.json")["cells"][3]["id"]
    (out / "cells" / f"{gone}.json").unlink()
    left = job.pending(saved, out)
    assert [[c.id for c in b.cells] for b in left] == [[gone]]


def one_line(e: pytest.ExceptionInfo[KmatrixError]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_refuses_shards_of_another_plan_naming_the_directory(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    doc = rundir.read_json(shards[1] / "manifest.json")
    doc["shard"] = dict(
        doc["shard"], plan_digest="e" * 64, plan=dict(doc["shard"]["plan"], cells=8)
    )
    rundir.write_json(shards[1] / "manifest.json", doc)
    with pytest.raises(KmatrixError) as e:
        merge.merge(shards, tmp_path / "merged", [])
    assert one_line(e) == (f"{shards[1]}: a different plan from {shards[0]}: cells 8 here, 6 there")
    assert not (tmp_path / "merged").exists(), "nothing is written before the checks pass"


def test_refuses_another_build_of_a_split_kernel(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    doc = rundir.read_json(shards[1] / "plan.json")
    doc["kernels"][0]["release"] = "6.18.45"
    rundir.write_json(shards[1] / "plan.json", doc)
    with pytest.raises(KmatrixError) as e:
        merge.merge(shards, tmp_path / "merged", [])
    assert one_line(e) == (
        f"{shards[1]}: kernel host is 6.18.45 here but 6.18.44-fc-v669 in {shards[0]}"
    )


def test_a_shard_that_could_not_fetch_a_split_kernel_still_merges(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    doc = rundir.read_json(shards[0] / "plan.json")
    doc["kernels"][0]["release"] = "unresolved"
    rundir.write_json(shards[0] / "plan.json", doc)
    out = merge.merge(shards, tmp_path / "merged", [])
    assert rundir.read_json(out / "plan.json")["kernels"][0]["release"] == "6.18.44-fc-v669"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([0], "{0}: shard 2/3, 3/3 of the same plan not given"),
        ([0, 0, 1, 2], "{0}: shard 1/3 given twice (also {0})"),
    ],
)
def test_refuses_missing_or_repeated_shards(
    tmp_path: Path, given: list[int], expected: str
) -> None:
    shards = make_shards(tmp_path, 3)
    with pytest.raises(KmatrixError) as e:
        merge.merge([shards[i] for i in given], tmp_path / "merged", [])
    assert one_line(e) == expected.format(*shards)


def test_refuses_a_run_that_is_not_a_shard_and_a_used_out_dir(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    with pytest.raises(KmatrixError) as e:
        merge.merge([RECORDED.resolve(), *shards], tmp_path / "merged", [])
    assert one_line(e) == f"{RECORDED.resolve()}: not a shard (made by `kmatrix run --shard I/N`)"
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "x").write_text("")
    with pytest.raises(KmatrixError, match="exists and is not empty"):
        merge.merge(shards, tmp_path / "merged", [])


def test_refuses_a_shard_that_is_still_running(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2)
    with rundir.lock_run(shards[0]), pytest.raises(KmatrixError, match="in use by a kmatrix run"):
        merge.merge(shards, tmp_path / "merged", [])


def test_merge_command_prints_the_run_and_exits_2_on_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = make_shards(tmp_path, 2)
    argv = ["merge", str(shards[0]), "--out", str(tmp_path / "m"), "--no-report"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    argv = ["merge", *map(str, shards), "--out", str(tmp_path / "m"), "--no-report"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "m").resolve())


def test_merge_fails_on_a_change_against_the_previous_comparable_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(RECORDED, runs / "run")
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(f'[settings]\nruns_dir = "{runs}"\n[[kernel]]\nname = "host"\nsource = "host"\n')
    shards = make_shards(tmp_path, 2)
    base = ["--config", str(cfg), "merge", *map(str, shards), "--no-report"]
    assert cli.main([*base, "--out", str(runs / "same"), "--fail-on-change", "any"]) == 0
    gone = rundir.read_json(shards[1] / "plan.json")["cells"][0]["id"]
    (shards[1] / "cells" / f"{gone}.json").unlink()
    assert cli.main([*base, "--out", str(runs / "lost"), "--fail-on-change"]) == 1
    assert "1 verdicts changed" in capsys.readouterr().out
