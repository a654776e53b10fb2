"""The presentation layer alone (no MLflow): both pages share one layout, Markdown and HTML come from the same
page data, HTML is escaped, and the figures module stands apart from the report and from tracking."""

import ast
import re
from pathlib import Path

from rayexp import figures
from rayexp.recommend import RecommendationPage
from rayexp.rendering import MISSING, Cell, Table, bold, table_markdown, write_page
from rayexp.report import Provenance, ReportPage

HOSTILE = "<script>alert('x')</script> & co"


def _table(title: str = "") -> Table:
    return Table(
        head=["backbone", "dtd"],
        rows=[[Cell("a_net"), Cell("72.00", place=1)], [Cell(HOSTILE), Cell(MISSING, missing=True)]],
        title=title,
        chance=["2.13"],
    )


def _pages(tmp_path: Path) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    report = ReportPage(
        title="rayexp: " + HOSTILE,
        experiment=HOSTILE,
        date="2026-01-01 00:00 UTC",
        provenance=Provenance(runs=3, random=2, commits=["abc123", HOSTILE], settings=["patience: 5"]),
        selection="**test** — tagged `capped`",
        notes=[],
        left_out=[HOSTILE],
        top_table=_table("Top backbones per domain"),
        domain_lines=["**texture**: use **a_net**"],
        heatmaps=[],
        fraction_figures=[],
        verdicts=_table("Per dataset and fraction"),
        verdict_lines=["dtd at 1.0: **a_net** " + HOSTILE],
        rules=["rules"],
        domain_tables=[_table("texture — fraction 1.0")],
        fraction_tables=[_table("dtd")],
        correlation="not enough backbones",
        cost=_table(),
        figures=[],
        missing=1,
    )
    recommendation = RecommendationPage(
        title="Which backbone for dtd?",
        verdict="Use **a_net** for dtd " + HOSTILE,
        left_out=[],
        ranking=Table(["rank", "backbone"], [[Cell("1"), Cell("a_net")]], title="Ranking at fraction 1.0", leader=True),
        prior=[HOSTILE],
        rules="rules",
        stopped=[],
        figure=None,
        check=[HOSTILE],
    )
    return write_page(report, tmp_path, "report"), write_page(recommendation, tmp_path, "recommendation")


def test_both_pages_share_one_layout_and_escape_their_text(tmp_path):
    (report_md, report_html), (rec_md, rec_html) = _pages(tmp_path)
    html = {p.stem: p.read_text() for p in (report_html, rec_html)}
    style = {name: text.split("<style>")[1].split("</style>")[0] for name, text in html.items()}
    assert style["report"] == style["recommendation"] and "td.top1" in style["report"]
    # The window's width, not a narrow column; a wide table scrolls inside its container.
    assert not re.search(r"body[^{]*{[^}]*max-width", style["report"]) and ".scroll{overflow-x:auto" in style["report"]
    assert '<div class="scroll">\n<table>' in html["report"]
    assert '<body class="report">' in html["report"] and '<body class="recommendation">' in html["recommendation"]
    for text in html.values():
        assert "<script>" not in text and "&lt;script&gt;" in text
    assert '<td class="top1">72.00</td>' in html["report"] and '<td class="missing">missing</td>' in html["report"]
    assert "<b>test</b> — tagged <code>capped</code>" in html["report"]
    # The header's loud line, and the commits, in the box above every table.
    warning = "2 of 3 runs trained from random init: these are not fine-tuning results"
    assert html["report"].index(warning) < html["report"].index("<table")
    assert 'class="warning"' in html["report"] and "<code>abc123</code>" in html["report"]
    assert "Use <b>a_net</b> for dtd" in html["recommendation"] and '<tr class="first">' in html["recommendation"]
    # Markdown is not HTML: the same text, unescaped, bold as Markdown.
    markdown = report_md.read_text()
    assert markdown.startswith("# rayexp: " + HOSTILE + "\n\n> **Warning** — " + warning)
    assert "| a_net | **72.00** |" in markdown and "- **Commit:** `abc123`, `" + HOSTILE + "`" in markdown
    assert "| *chance* | 2.13 |" in markdown and "1 cell(s) have no finished seed yet" in markdown
    assert "```\n" + HOSTILE + "\n```" in rec_md.read_text()


def test_markdown_tables_and_bold():
    assert table_markdown(_table()) == (
        f"| backbone | dtd |\n|---|---|\n| a_net | **72.00** |\n| {HOSTILE} | missing |\n| *chance* | 2.13 |\n"
    )
    assert str(bold("**a** < `b`")) == "<b>a</b> &lt; <code>b</code>"


def test_the_figures_module_imports_neither_the_report_nor_tracking_nor_ray():
    tree = ast.parse(Path(figures.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "io", "pathlib", "textwrap", "typing", "matplotlib", "matplotlib.pyplot"}
    png = figures.confusion_png([[3, 1], [0, 4]], ["a", "b"], "2 classes")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
