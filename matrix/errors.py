"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class KmatrixError(Exception):
    """Base: the message alone must tell the user what is wrong and what is expected."""

    exit_code = 2


class ConfigError(KmatrixError):
    """kernels.toml or a command-line option is malformed."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class PrerequisiteError(KmatrixError):
    """A tool, permission or kernel feature that kmatrix needs is missing on this machine."""

    exit_code = 3


class CatalogError(KmatrixError):
    """A kernel could not be resolved, downloaded, verified or extracted."""

    exit_code = 4


class RunnerError(KmatrixError):
    """A runner could not run a batch at all; execute turns this into infra results."""

    exit_code = 5


class HostLost(RunnerError):
    """An SSH host went away mid-batch (connection lost, a command timed out): the
    scheduler re-queues the cells that have no result yet on another slot."""
