"""Documentation that must follow the code."""

from __future__ import annotations

from pathlib import Path

from nnunetv2_mapo.config import ALL_SETTINGS, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_settings_table_is_current() -> None:
    assert markdown_table() in (DOCS / "settings.md").read_text()


def test_every_mapo_setting_has_a_rationale() -> None:
    text = (DOCS / "settings.md").read_text().split("## Why these defaults", 1)[1]
    for name in ALL_SETTINGS:
        if name.startswith("mapo_"):
            assert f"**`{name}`" in text, name
