"""Documentation that must follow the code."""

from __future__ import annotations

import re
from pathlib import Path

from nnunetv2_mapo.training.settings import ALL_SETTINGS, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_settings_table_is_current() -> None:
    assert markdown_table() in (DOCS / "settings.md").read_text()


def test_every_mapo_setting_has_a_rationale() -> None:
    text = (DOCS / "settings.md").read_text().split("## Why these defaults", 1)[1]
    for name in ALL_SETTINGS:
        if name.startswith("mapo_"):
            assert f"**`{name}`" in text, name


def test_user_docs_cite_nothing_outside_the_repository() -> None:
    readme = (DOCS.parent / "README.md").read_text().split("## Development", 1)[0]
    for name, text in [("README.md", readme)] + [(p.name, p.read_text()) for p in DOCS.glob("*.md")]:
        assert "../shared" not in text, name
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links resolve in the repository
            base = DOCS.parent if name == "README.md" else DOCS
            assert (base / link).exists(), (name, link)


def test_the_figures_the_readme_quotes_are_in_the_results_table_it_cites() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    summary = readme.split("**What the evidence supports today**", 1)[1].split("## Quick start", 1)[0]
    table = (DOCS / "benchmarks.md").read_text().split("## Every regime measured", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"\[[-+]?\d+\.\d+, [-+]?\d+\.\d+\]|[-+]\d+(?:\.\d+)?%|[-+]\d+\.\d+(?= (?:Dice )?points)",
                        summary)
    assert len(quoted) >= 8  # the intervals, the relative HD95/ASD and the point differences of the summary
    missing = [figure for figure in quoted if figure not in table]
    assert not missing, f"README quotes {missing}, which the table of docs/benchmarks.md does not hold"
