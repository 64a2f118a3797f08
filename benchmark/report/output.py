"""Writing a built report to disk: one HTML file, or Markdown plus its figure folder.

The format comes from `--format`, else from the output's suffix (.md, .markdown -> md), else html.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from benchmark.report import html, markdown
from benchmark.report.document import Report

FORMATS = ("html", "md")
MD_SUFFIXES = (".md", ".markdown")
FILES_SUFFIX = "_files"   # report.md -> report_files/ (the browsers' "save page" convention)


def resolve_format(out: str | Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"unknown report format {explicit!r}; choose from {', '.join(FORMATS)}")
        return explicit
    return "md" if Path(out).suffix.lower() in MD_SUFFIXES else "html"


def write(report: Report, out: str | Path, fmt: str) -> list[Path]:
    """Write the report; returns the files written (the document first)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(html.render(report), encoding="utf-8")
        return [out]
    folder = out.with_name(out.stem + FILES_SUFFIX)
    text, files = markdown.render(report, folder.name)
    if folder.is_dir():
        shutil.rmtree(folder)   # figures of an earlier report must not linger beside this one
    folder.mkdir()
    written = [out]
    for name, png in files.items():
        (folder / name).write_bytes(png)
        written.append(folder / name)
    out.write_text(text, encoding="utf-8")
    return written
