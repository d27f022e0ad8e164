"""The one markdown-table writer (report.md, a blend's table.md).

Not `DataFrame.to_markdown`: it needs the `tabulate` package, one more dependency (and one more wheel in the
offline Kaggle bundle) for a dozen lines, and it pads cells to align columns, which would change the format of
the files already written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    # a '|' inside a cell would end it; a newline would end the row
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub pipe table: header, a `---` rule, one line per row (cells as `str`; format numbers first)."""
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
