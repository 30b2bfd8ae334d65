"""Errors for user mistakes. The CLI turns these into one line and exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class AmbientMedError(Exception):
    """Base class for errors caused by user input (files, options, protocols)."""


class DataError(AmbientMedError, ValueError):
    """A data file cannot be used: unreadable, wrong layout, non-finite values, empty.

    The message always names the file and the problem: ``DataError(path, "has no 'kspace' dataset")``.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class NoiseEstimateError(AmbientMedError, ValueError):
    """The data cannot support a noise estimate (for example, noise-free synthetic data)."""


class ConfigError(AmbientMedError, ValueError):
    """A protocol or option is invalid: unknown key, wrong type, does not fit the data."""
