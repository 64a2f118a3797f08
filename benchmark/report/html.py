"""The report as ONE self-contained HTML file: inline CSS, figures as data: URIs, no script.

Why: the file is mailed, archived next to a paper and opened on machines without network; any
link to a CDN, font or script server would break it there (and leak that it was opened). Every
text is escaped; the only links are in-page anchors.
"""
from __future__ import annotations

import base64
import html

from benchmark.report.document import Figure, Paragraph, Report, Table

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2330;
       max-width: 1500px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2.2em; border-bottom: 1px solid #d5d9e0; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin: 1.6em 0 .4em; }
.header p { margin: .1em 0; color: #4a5263; }
nav ol { columns: 2; color: #4a5263; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: .3em 0; }
th, td { border: 1px solid #d5d9e0; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f5; position: sticky; top: 0; }
tr:nth-child(even) td { background: #f8f9fb; }
td.run { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; color: #4a5263; }
.notes { font-size: 12.5px; color: #4a5263; margin: .3em 0 1em; padding-left: 1.2em; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { font-size: 13px; color: #4a5263; max-width: 1000px; }
figcaption b { color: #1d2330; }
.empty { color: #6b7385; font-style: italic; }
"""

RUN_COLUMNS = ("Run id",)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(table: Table) -> str:
    parts = [f"<h3>{_e(table.title)}</h3>"]
    if table.frame.empty:
        parts.append(f'<p class="empty">{_e(table.empty_text)}</p>')
    else:
        cols = list(table.frame.columns)
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = []
        for row in table.frame.itertuples(index=False):
            cells = "".join(f'<td class="run">{_e(v)}</td>' if c in RUN_COLUMNS else f"<td>{_e(v)}</td>"
                            for c, v in zip(cols, row))
            body.append(f"<tr>{cells}</tr>")
        parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
                     "</tbody></table></div>")
    if table.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(parts)


def _figure(fig: Figure) -> str:
    return (f'<figure id="{_e(fig.name)}"><img src="{data_uri(fig.png)}" alt="{_e(fig.title)}">'
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)}</figcaption></figure>")


def _block(block) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    if isinstance(block, Paragraph):
        return f"<p>{_e(block.text)}</p>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render(report: Report) -> str:
    """The whole document as one string."""
    nav = "".join(f'<li><a href="#s{i}">{_e(s.title)}</a></li>' for i, s in enumerate(report.sections, 1))
    sections = "\n".join(
        f'<section id="s{i}"><h2>{i}. {_e(s.title)}</h2>\n' + "\n".join(_block(b) for b in s.blocks) + "</section>"
        for i, s in enumerate(report.sections, 1))
    header = "".join(f"<p>{_e(line)}</p>" for line in report.header)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f'<h1>{_e(report.title)}</h1>\n<div class="header">{header}</div>\n'
            f"<nav><ol>{nav}</ol></nav>\n{sections}\n</body>\n</html>\n")
