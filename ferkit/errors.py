"""The errors that reading a dataset raises and reports, shared by the readers of every format."""

from __future__ import annotations

from dataclasses import dataclass


class DatasetError(ValueError):
    """The dataset (or one of its records) cannot be read as FER-2013."""


@dataclass(frozen=True)
class BadRecord:
    """One record that could not be read: where it is and what is wrong."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"
