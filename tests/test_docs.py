"""docs/benchmarks.md's current tables are generated from committed result files, never typed by
hand: every block is regenerated here from the file it names and must match the page."""
from pathlib import Path

import pytest

from orchestrator.errors import PolyllamaError
from orchestrator.results import docpage, resultfile

from test_stats import _suite

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"


def test_the_page_has_a_current_block_and_every_block_is_what_its_result_file_gives():
    found = docpage.blocks(PAGE.read_text())
    assert found, "docs/benchmarks.md has no generated block of current results"
    for matrix, source, text in found:
        suite = resultfile.load(ROOT / source)
        assert suite.matrix_name == matrix
        assert text == docpage.block(suite, source), (
            f"the {matrix} block differs from what {source} gives: run "
            f"`invoke report {source} --docs docs/benchmarks.md`")


def test_a_block_is_replaced_in_place_and_a_new_matrix_is_added_before_the_end_marker(tmp_path):
    page = tmp_path / "b.md"
    page.write_text(f"# t\n\n{docpage.END_OF_BLOCKS}\n\ntail\n")
    suite = _suite({"c": [10.0] * 5, "go": [5.0] * 5})
    docpage.update(page, suite, "a.json")
    first = page.read_text()
    assert first.index("<!-- current:t source=a.json -->") < first.index(docpage.END_OF_BLOCKS)
    assert "c is fastest at 10.0 tok/s" in first and "invoke bench --matrix t" in first
    faster = _suite({"c": [10.0] * 5, "go": [20.0] * 5})
    docpage.update(page, faster, "b.json")
    second = page.read_text()
    assert len(docpage.blocks(second)) == 1 and "source=b.json" in second and "go is fastest" in second
    assert second.endswith("tail\n")


def test_a_page_without_the_marker_is_one_error(tmp_path):
    page = tmp_path / "b.md"
    page.write_text("# no marker\n")
    with pytest.raises(PolyllamaError, match="marker"):
        docpage.update(page, _suite({"c": [10.0] * 5}), "a.json")
    with pytest.raises(PolyllamaError, match="cannot read"):
        docpage.update(tmp_path / "missing.md", _suite({"c": [10.0] * 5}), "a.json")
