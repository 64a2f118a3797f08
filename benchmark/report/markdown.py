"""The report as Markdown with its figures as PNG files in a folder beside it, linked relatively.

Why relative links: the .md and its folder travel together (a repository, a ticket) and render
wherever they land. Table cells are escaped so a `|` in a path or an error message cannot break
a row.
"""
from __future__ import annotations

from urllib.parse import quote

from benchmark.report.document import Figure, Paragraph, Report, Table


def _cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _table(table: Table) -> list[str]:
    lines = [f"### {table.title}", ""]
    if table.frame.empty:
        lines += [f"_{table.empty_text}_", ""]
    else:
        cols = list(table.frame.columns)
        lines.append("| " + " | ".join(_cell(c) for c in cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.frame.itertuples(index=False)]
        lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return lines + ([""] if table.notes else [])


def _unique(name: str, taken) -> str:
    stem, n = name.removesuffix(".png"), 2
    while name in taken:
        name, n = f"{stem}-{n}.png", n + 1
    return name


def render(report: Report, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """(Markdown text, {file name in `files_dir`: PNG bytes}); links are `files_dir/<name>.png`."""
    lines = [f"# {report.title}", ""] + [f"{line}  " for line in report.header] + [""]
    files: dict[str, bytes] = {}
    for i, section in enumerate(report.sections, 1):
        lines += [f"## {i}. {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _table(block)
            elif isinstance(block, Figure):
                name = _unique(f"{block.name}.png", files)
                files[name] = block.png
                lines += [f"![{block.title}]({quote(files_dir)}/{quote(name)})", "",
                          f"**{block.title}.** {block.caption}", ""]
            elif isinstance(block, Paragraph):
                lines += [block.text, ""]
            else:
                raise TypeError(f"unknown report block {type(block).__name__}")
    return "\n".join(lines), files
