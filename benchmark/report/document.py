"""The report as plain data: sections of paragraphs, tables of ready-made strings, and PNG figures.

Why a document model: the HTML and Markdown writers must show the same numbers, so everything
is decided (which rows, how a number is written, which footnote) before either writer runs,
and each writer only lays the blocks out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """`frame` holds display strings (numbers already formatted); `notes` are its footnotes."""

    title: str
    frame: pd.DataFrame
    notes: tuple[str, ...] = ()
    empty_text: str = "Nothing stored."


@dataclass(frozen=True)
class Figure:
    """A PNG figure; `name` is its file stem in the Markdown output (letters, digits, '-')."""

    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Paragraph | Table | Figure, ...] = ()


@dataclass(frozen=True)
class Report:
    title: str
    header: tuple[str, ...] = ()          # lines under the title: database, date, version
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]
