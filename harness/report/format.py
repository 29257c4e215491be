"""Number formatting and the Markdown / LaTeX / CSV writers for report tables.

Written here rather than with `DataFrame.to_markdown` / `to_latex`, which need tabulate and
jinja2 (not dependencies of this project). Tables keep two frames: `data` with raw values (CSV,
full precision) and `display` with the formatted strings (Markdown, LaTeX, PDF).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

MISSING = "–"  # en dash: "not measured"


@dataclass(frozen=True)
class Table:
    name: str  # file stem: <name>.csv / .md / .tex
    title: str
    data: pd.DataFrame  # raw values
    display: pd.DataFrame  # strings, one column per shown field
    align: tuple[str, ...]  # "l" or "r" per display column
    caption: str = ""

    def __post_init__(self):
        assert len(self.align) == len(self.display.columns), (self.name, self.align)


def is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_fixed(value, digits: int = 3, sign: bool = False) -> str:
    if is_missing(value):
        return MISSING
    return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"


def fmt_int(value) -> str:
    """Exact counts with thousands separators (402,735)."""
    return MISSING if is_missing(value) else f"{int(round(float(value))):,}"


def fmt_si(value) -> str:
    """Large counts such as FLOPs: 3 significant figures and an SI prefix (1.23 G)."""
    if is_missing(value):
        return MISSING
    value = float(value)
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g}"


def fmt_rate(value) -> str:
    """Throughputs (images/s): 3 significant figures, thousands separated from 1,000 up."""
    if is_missing(value):
        return MISSING
    value = float(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def fmt_ratio(value) -> str:
    if is_missing(value):
        return MISSING
    value = float(value)
    return f"{value:,.0f}×" if value >= 100 else f"{value:.3g}×"


def fmt_percent(value, digits: int = 1) -> str:
    return MISSING if is_missing(value) else f"{100.0 * float(value):.{digits}f}%"


def fmt_seconds(value) -> str:
    """Wall time as `1 h 02 min`, `3 min 20 s` or `12.3 s`."""
    if is_missing(value):
        return MISSING
    seconds = float(value)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def fmt_text(value) -> str:
    return MISSING if is_missing(value) else str(value)


def to_markdown(table: Table) -> str:
    """GitHub-flavoured pipe table (numbers right-aligned), one line per row."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in table.display.columns) + " |"
    rule = "|" + "|".join("---:" if a == "r" else ":---" for a in table.align) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in table.display.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def markdown_document(table: Table) -> str:
    """The `.md` file of a table: title, table, caption."""
    text = f"### {table.title}\n\n{to_markdown(table)}"
    return text + (f"\n{table.caption}\n" if table.caption else "")


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "−": "$-$", "×": r"$\times$", "≈": r"$\approx$",
                  "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$", "√": r"$\sqrt{}$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    for symbol, replacement in _LATEX_UNICODE.items():
        out = out.replace(symbol, replacement)
    return out


def to_latex(table: Table) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`)."""
    lines = [
        f"% {latex_escape(table.title)} (harness report; needs \\usepackage{{booktabs}})",
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        r"\caption{" + latex_escape(table.title
                                     + (f". {table.caption}" if table.caption else "")) + "}",
        r"\label{tab:" + table.name.replace("_", "-") + "}",
        r"\begin{tabular}{" + "".join(table.align) + "}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.display.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\"
              for row in table.display.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Raw values, full precision, empty field for "not measured"."""
    return table.data.to_csv(index=False, lineterminator="\n")
