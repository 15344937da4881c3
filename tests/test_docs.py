"""The documents state what the code declares: the options table of docs/GENERATION.md is the
one ``llamadiff.config.options_table()`` renders from the option declarations."""

from pathlib import Path

from llamadiff.config import options_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_options_table_matches_the_declarations():
    text = (DOCS / "GENERATION.md").read_text(encoding="utf-8")
    start, end = "<!-- options:start -->\n", "\n<!-- options:end -->"
    assert start in text and end in text
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == options_table(), "docs/GENERATION.md's options table is stale: paste options_table()"


def test_the_plots_are_linked():
    text = "".join((DOCS / name).read_text(encoding="utf-8") for name in ("BENCHMARKS.md",))
    for png in sorted(p.name for p in DOCS.glob("*.png")):
        assert f"]({png})" in text, f"docs/{png} is linked from nowhere"
