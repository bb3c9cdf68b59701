"""The committed table documentation is what the code would generate now."""

from pathlib import Path

import pytest

from valueadded.docs import render_all

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name, text", sorted(render_all().items()))
def test_docs_are_current(name, text):
    committed = (DOCS / name).read_text()
    assert committed == text, f"docs/{name} is stale: run `.venv/bin/valueadded docs`"


def test_every_rule_and_column_is_documented():
    text = "\n".join(render_all().values())
    for needle in ("unknown_school", "duplicate_key", "out_of_range.idaci", "`exclusion_reason`", "`row_json`", "`run_id`"):
        assert needle in text
