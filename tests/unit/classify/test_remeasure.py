"""Folding a cell's attempts into one verdict, and choosing what to measure again."""

from __future__ import annotations

from typing import Any

from matrix.classify.remeasure import attempts_of, base_of, fold, next_round
from matrix.model import Batch, Cell, HostSource, KernelSpec, Limits, ResolvedKernel, Verdict
from tests.unit.classify.test_classify import knee_result


def thin() -> dict[str, Any]:
    doc = knee_result([1000] * 29 + [200] * 20)  # success, late/early 0.23, a steady loop
    doc["metrics"]["ended_by"] = "target"
    return doc


def crawl() -> dict[str, Any]:
    doc = knee_result([1000] * 29 + [20] * 80)  # a clear slowdown
    doc["metrics"]["ended_by"] = "collapse"
    return doc


def short() -> dict[str, Any]:
    doc = knee_result([1000] * 10)
    doc["metrics"]["ended_by"] = "window"
    return doc


def test_a_clear_verdict_is_single_shot_and_settled() -> None:
    f = fold("c", [crawl()])
    assert f.classified.verdict is Verdict.SLOWDOWN
    assert f.confirmation == "single-shot" and f.settled


def test_a_thin_verdict_wants_another_attempt_then_is_confirmed() -> None:
    first = fold("c", [thin()])
    assert not first.settled
    again = fold("c", [thin(), thin()])
    assert again.settled and again.confirmation == "confirmed"
    assert again.chosen_id == "c.a2"
    assert "within 1.25x" in again.remeasured_because


def test_disagreeing_attempts_go_to_a_third_and_the_majority_decides() -> None:
    split = fold("c", [thin(), crawl()])
    assert not split.settled and split.confirmation == "unsettled"
    decided = fold("c", [thin(), crawl(), crawl()])
    assert decided.classified.verdict is Verdict.SLOWDOWN
    assert decided.confirmation == "majority" and decided.chosen_id == "c.a3"


def test_an_inconclusive_attempt_does_not_vote() -> None:
    f = fold("c", [short(), crawl()])
    assert f.classified.verdict is Verdict.SLOWDOWN and f.settled
    assert f.confirmation == "single-shot"
    assert fold("c", [short()]).settled is False


def test_next_round_is_bounded_and_names_attempts() -> None:
    kernel = ResolvedKernel(KernelSpec("host", HostSource()), "6.x")
    cell = Cell("host", "2B", (), 0, Limits())
    batches = [Batch(kernel, (cell,))]
    raw = {cell.id: short()}
    again = next_round(batches, raw)
    assert [c.id for c in again[0].cells] == [f"{cell.id}.a2"]
    raw.update({f"{cell.id}.a2": short(), f"{cell.id}.a3": short()})
    assert next_round(batches, raw) == []
    assert base_of(f"{cell.id}.a3") == cell.id
    assert len(attempts_of(cell.id, raw)) == 3
