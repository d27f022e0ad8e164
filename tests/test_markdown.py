"""The one markdown-table writer: the pipe-table format report.md and table.md keep."""

from __future__ import annotations

import pandas as pd

from fb3stack.report.markdown import markdown_table
from fb3stack.submit.report import _markdown


def test_pipe_table_with_header_rule_and_escaped_cells():
    text = markdown_table(["name", "score"], [["a|b", "0.5"], ["two\nlines", 1]])
    assert text.splitlines() == ["| name | score |", "|---|---|", "| a\\|b | 0.5 |", "| two lines | 1 |"]


def test_report_member_table_formats_scores_and_seconds():
    df = pd.DataFrame([{"member": "tfidf", "MCRMSE": 0.512345, "train_s": 12.34}])
    assert _markdown(df).splitlines()[2] == "| tfidf | 0.5123 | 12.3 |"
