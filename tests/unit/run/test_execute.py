"""Scheduling the pool: one boot per kernel, a split tail instead of idle slots."""

from __future__ import annotations

from matrix.model import Batch, Cell, HostSource, KernelSpec, Limits, ResolvedKernel
from matrix.run.execute import balance


def batches(n: int, cells: int = 14) -> list[Batch]:
    out = []
    for k in range(n):
        kernel = ResolvedKernel(KernelSpec(f"k{k}", HostSource()), "6.x")
        out.append(Batch(kernel, tuple(Cell(f"k{k}", "2B", (), t, Limits()) for t in range(cells))))
    return out


def test_whole_rounds_keep_one_boot_per_kernel() -> None:
    assert [label for _, label in balance(batches(4), 2)] == ["", "", "", ""]
    assert len(balance(batches(1), 2)) == 1
    assert len(balance(batches(5), 1)) == 5


def test_a_kernel_left_alone_at_the_tail_is_split_over_the_idle_slot() -> None:
    planned = batches(5)
    out = balance(planned, 2)
    assert [(b.kernel.spec.name, label) for b, label in out][-2:] == [("k4", ""), ("k4", "+p2")]
    first, second = out[-2][0], out[-1][0]
    assert len(first.cells) == len(second.cells) == 7
    assert {c.id for c in first.cells} | {c.id for c in second.cells} == {
        c.id for c in planned[-1].cells
    }
    assert not {c.id for c in first.cells} & {c.id for c in second.cells}
