"""Assemble the PDF with matplotlib's PdfPages: title page(s), table pages, figure pages.

Written to memory first and then through `harness.atomic.write_bytes`, so a reader never sees
half a PDF.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.table import Table as MplTable

from harness.atomic import write_bytes
from harness.report.figures import Rendered
from harness.report.format import Table
from harness.report.overview import Overview
from harness.published import CONTEXT_NOTE

PAGE = (11.69, 8.27)  # A4 landscape, inches
LINES_PER_PAGE = 44
SUMMARY_ROWS_FIRST_PAGE = 16
TABLE_ROWS_PER_PAGE = 25
ROW_INCHES = 0.2  # height of one table row


def _text_lines(overview: Overview, produced: list[Rendered], skipped: list[Rendered],
                notes: list[str]) -> list[tuple[str, str]]:
    """(style, text) lines of the title page; style is 'title', 'head' or 'body'."""
    lines = [("title", overview.title), ("body", "")]
    for label, text in overview.facts:
        for part in textwrap.wrap(f"{label}: {text}", 150, subsequent_indent="    "):
            lines.append(("body", part))
    sections = [
        ("Caveats", overview.caveats),
        ("Weights behind each figure", [f"{r.title}: {r.weights}" for r in produced]),
        ("Figures skipped (data absent)", [f"{r.title}: {r.note}" for r in skipped]),
        ("Notes while reading the results", notes),
    ]
    for head, items in sections:
        if not items:
            continue
        lines += [("body", ""), ("head", head)]
        for item in items:
            wrapped = textwrap.wrap(item, 150, initial_indent="• ", subsequent_indent="   ")
            lines += [("body", part) for part in wrapped]
    return lines


def _text_pages(lines: list[tuple[str, str]]) -> list[Figure]:
    pages = []
    for start in range(0, len(lines), LINES_PER_PAGE):
        fig = Figure(figsize=PAGE)
        y = 0.95
        for style, text in lines[start:start + LINES_PER_PAGE]:
            size, weight = {"title": (15, "bold"), "head": (10, "bold"),
                            "body": (8.5, "normal")}[style]
            fig.text(0.05, y, text, fontsize=size, fontweight=weight, va="top")
            y -= 0.028 if style == "title" else 0.02
        pages.append(fig)
    return pages


def _draw_table(ax, table: Table, rows: slice, fontsize: float = 7.0,
                title_suffix: str = "") -> None:
    """Draw rows of `table.display` as a matplotlib table filling `ax` from the top.

    Column widths follow the longest text of each column; the font shrinks until the table
    fits the axes' width (estimated at 0.6 em per character)."""
    ax.axis("off")
    fig = ax.get_figure()
    axes_inches = ax.get_position().width * fig.get_figwidth()
    display = table.display.iloc[rows]
    title = table.title + title_suffix
    ax.set_title(textwrap.fill(title, max(int(axes_inches * 72 / (9 * 0.6)), 20)), loc="left",
                 fontsize=9, fontweight="bold")
    if not len(display):
        return
    texts = [list(display.columns)] + display.to_numpy().tolist()
    chars = [max(len(str(row[c])) for row in texts) + 2 for c in range(len(texts[0]))]
    while fontsize > 4.0 and sum(chars) * fontsize * 0.6 / 72 > axes_inches:
        fontsize -= 0.25
    widths = [c * fontsize * 0.6 / 72 / axes_inches for c in chars]  # axes fractions
    axes_height = ax.get_position().height * fig.get_figheight()
    height = min(ROW_INCHES / axes_height, 0.92 / (len(display) + 1))  # axes fraction per row
    aligns = ["right" if a == "r" else "left" for a in table.align]
    drawn = MplTable(ax, loc="upper left")
    for row, values in enumerate(texts):
        for column, text in enumerate(values):
            cell = drawn.add_cell(row, column, width=widths[column], height=height,
                                  text=str(text), loc=aligns[column], edgecolor="0.75")
            cell.visible_edges = "horizontal" if row == 0 else "B"
            cell.PAD = 0.5 / chars[column]  # one character's padding either side
            if row == 0:
                cell.get_text().set_fontweight("bold")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(fontsize)
    ax.add_table(drawn)
    if table.caption:
        wrap = max(int(axes_inches * 72 / (6.5 * 0.55)), 30)
        ax.text(0.0, 1.0 - height * (len(texts) + 0.6), textwrap.fill(table.caption, wrap),
                transform=ax.transAxes, fontsize=6.5, va="top", color="0.25")


def _summary_page(summary: Table, published: list[Table]) -> Figure:
    fig = Figure(figsize=PAGE)
    grid = fig.add_gridspec(2, max(len(published), 1), height_ratios=(3, 2), hspace=0.35,
                            left=0.03, right=0.97, top=0.93, bottom=0.08)
    rows = min(len(summary.display), SUMMARY_ROWS_FIRST_PAGE)
    suffix = "" if rows == len(summary.display) else f" (rows 1-{rows})"
    _draw_table(fig.add_subplot(grid[0, :]), summary, slice(0, rows), 6.5, suffix)
    for index, table in enumerate(published):
        _draw_table(fig.add_subplot(grid[1, index]), table, slice(None), 6.5)
    fig.text(0.03, 0.965, CONTEXT_NOTE, fontsize=7.5, color="darkred")
    return fig


def _table_inches(rows: int) -> float:
    """Page height a table of `rows` rows takes: title, header, rows, caption, gap."""
    return 0.35 + (rows + 1) * ROW_INCHES + 0.75


def _table_pages(tables: list[Table], start: int = 0) -> list[Figure]:
    """Tables stacked top to bottom, as many per page as fit; long ones split by rows."""
    chunks = []  # (table, rows, title suffix)
    for table in tables:
        total = len(table.display)
        first_row = start if table is tables[0] else 0
        for first in range(first_row, total, TABLE_ROWS_PER_PAGE):
            last = min(first + TABLE_ROWS_PER_PAGE, total)
            whole = first == 0 and last == total
            chunks.append((table, slice(first, last),
                           "" if whole else f" (rows {first + 1}-{last})"))
    usable = PAGE[1] - 1.0  # inches between the page margins
    pages: list[list] = []
    used = usable
    for chunk in chunks:
        need = _table_inches(chunk[1].stop - chunk[1].start)
        if used + need > usable:
            pages.append([])
            used = 0.0
        pages[-1].append(chunk)
        used += need
    figures = []
    for page in pages:
        fig = Figure(figsize=PAGE)
        top = 1.0 - 0.5 / PAGE[1]
        for table, rows, suffix in page:
            need = _table_inches(rows.stop - rows.start)
            rect = (0.03, top - need / PAGE[1], 0.94, (need - 0.35) / PAGE[1])
            _draw_table(fig.add_axes(rect), table, rows, 7.5, suffix)
            top -= need / PAGE[1]
        figures.append(fig)
    return figures


def build_pages(overview: Overview, summary: Table, published: list[Table],
                other_tables: list[Table], produced: list[Rendered], skipped: list[Rendered],
                notes: list[str]) -> list[Figure]:
    """Title page(s), the summary beside the published numbers, other tables, then figures."""
    pages = _text_pages(_text_lines(overview, produced, skipped, notes))
    pages.append(_summary_page(summary, published))
    if len(summary.display) > SUMMARY_ROWS_FIRST_PAGE:
        pages += _table_pages([summary], start=SUMMARY_ROWS_FIRST_PAGE)
    pages += _table_pages(other_tables)
    return pages + [rendered.figure for rendered in produced]


def write_pdf(path: Path, pages: list[Figure], title: str) -> int:
    """Write the pages as one PDF, atomically; returns its page count."""
    buffer = io.BytesIO()
    with PdfPages(buffer, metadata={"Title": title, "Creator": "harness report",
                                    "CreationDate": None}) as pdf:
        for page in pages:
            pdf.savefig(page)
        count = pdf.get_pagecount()
    write_bytes(path, buffer.getvalue())
    return count
