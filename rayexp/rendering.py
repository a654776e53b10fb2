"""Presentation shared by the sweep report (:mod:`rayexp.report`) and a dataset's recommendation
(:mod:`rayexp.recommend`): number formats, the :class:`Table` both render, the Jinja environment of
``rayexp/templates``, and the figures drawn from cell summaries: accuracy vs fraction, and the backbone x dataset
heatmap of one fraction.

A page is built once as plain data (a dataclass of lines, tables and figure paths) and rendered twice, by
its ``<name>.md`` and ``<name>.html`` templates; both extend the shared layout (``base.md``, ``base.html``:
the one stylesheet) and draw tables with the same macros (``_macros.md``, ``_macros.html``). HTML is
autoescaped. No rules here: ranks, ties, verdicts and chance are :mod:`rayexp.results`'.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jinja2
from markupsafe import Markup, escape

from rayexp import figures
from rayexp.results import CellSummary, dataset_ranks, scored

MISSING = "missing"
TEMPLATES = Path(__file__).parent / "templates"


def pct(value: float | None) -> str:
    """An accuracy in percent with two decimals, or ``missing``."""
    return MISSING if value is None else f"{100 * value:.2f}"


def spread(mean: float | None, std: float | None) -> str:
    """A mean accuracy in percent with its standard deviation when there is one (``81.20 ± 1.05``), or ``missing``."""
    if mean is None:
        return MISSING
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


@dataclass(frozen=True)
class Cell:
    """One table cell's text, and what the formats show of it."""

    text: str
    place: int | None = None  # its place within its dataset: a top-three place is bold (Markdown) or shaded (HTML)
    missing: bool = False  # no score yet: greyed out in HTML
    css: str = ""  # an HTML class of its own (e.g. a verdict's kind); Markdown shows the text alone

    @property
    def top(self) -> int | None:
        return self.place if self.place is not None and self.place <= 3 else None


@dataclass
class Table:
    """A table as both formats draw it: a header, rows whose first cell labels them, and optionally a last
    row of each column's chance level."""

    head: list[str]
    rows: list[list[Cell]]
    title: str = ""
    chance: list[str] | None = None
    leader: bool = False  # the first row is the answer: highlighted in HTML


def row(*texts: object) -> list[Cell]:
    """Plain cells, each value as ``str`` formats it."""
    return [Cell(str(t)) for t in texts]


def bold(text: object) -> Markup:
    """Markdown's ``**bold**`` and back-quoted code as HTML (``<b>``, ``<code>``), everything else escaped."""
    escaped = str(escape(text))
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)))


def png_data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:`` URI, so that a page holds its figures."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
ENV.filters.update(bold=bold, data_uri=png_data_uri)


def table_markdown(table: Table) -> str:
    """``table`` in Markdown, as the pages draw it."""
    return ENV.get_template("_macros.md").module.table(table)


def write_page(page: object, folder: Path, name: str) -> tuple[Path, Path]:
    """``page`` rendered by the templates ``<name>.md`` and ``<name>.html`` into files of those names in
    ``folder``; returns their paths (Markdown, HTML)."""
    paths = (folder / f"{name}.md", folder / f"{name}.html")
    for path in paths:
        path.write_text(ENV.get_template(path.name).render(page=page))
    return paths


def figure_accuracy_vs_fraction(summaries: Sequence[CellSummary], dataset: str, path: Path, top: int = 3) -> bool:
    """Accuracy against training fraction on ``dataset`` for the ``top`` backbones at its largest fraction
    (:func:`rayexp.results.scored`'s order), written to ``path``; False, and nothing written, with fewer than
    two fractions scored."""
    cells = [s for s in summaries if s.dataset == dataset and s.best_of_3 is not None]
    fractions = sorted({s.fraction for s in cells})
    if len(fractions) < 2:
        return False
    curves = {
        leader.backbone: sorted((s.fraction, 100 * s.best_of_3) for s in cells if s.backbone == leader.backbone)
        for leader in scored(cells, dataset, fractions[-1])[:top]
    }
    chance = next((s.chance for s in cells if s.chance is not None), None)
    figures.accuracy_vs_fraction(dataset, curves, chance, path)
    return True


def figure_heatmap(summaries: Sequence[CellSummary], fraction: float, path: Path) -> bool:
    """Backbone x dataset at ``fraction`` as a heatmap (:func:`rayexp.figures.heatmap`): best of seeds in
    percent, coloured by the rank within each dataset (:func:`rayexp.results.dataset_ranks`), datasets grouped
    by domain, backbones ordered by their mean rank over the datasets (best on top); written to ``path``.
    False, and nothing written, when no cell at ``fraction`` has a score."""
    cells = {(s.backbone, s.dataset): s for s in summaries if s.fraction == fraction}
    if not any(s.best_of_3 is not None for s in cells.values()):
        return False
    ranks = dataset_ranks(summaries, fraction)
    columns = sorted({(s.dataset, s.domain) for s in cells.values()}, key=lambda c: (c[1], c[0]))

    def mean_rank(backbone: str) -> float:
        mine = [ranking[backbone] for ranking in ranks.values() if backbone in ranking]
        return sum(mine) / len(mine) if mine else float("inf")

    backbones = sorted({b for b, _ in cells}, key=lambda b: (mean_rank(b), b))

    def label(s: CellSummary | None) -> str | None:
        if s is None or s.best_of_3 is None:
            return None
        return f"{100 * s.best_of_3:.1f}" + ("°" if s.above_chance is False else "")

    figures.heatmap(
        f"Top-1 test accuracy (%), best of seeds, at {figures.percent_label(fraction)} of the training split "
        "— colour: rank within the dataset; rows by mean rank",
        backbones,
        columns,
        [[label(cells.get((b, d))) for d, _ in columns] for b in backbones],
        [[ranks.get(d, {}).get(b) for d, _ in columns] for b in backbones],
        path,
    )
    return True
