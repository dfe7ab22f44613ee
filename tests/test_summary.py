"""The answer-first summary (results/summary.py): the ranking relative to the fastest row, the
peer at its best (the better of its row and its own tool), text agreement, validation, and cells
above the roofline reported as probe defects."""
from orchestrator.results import html, summary
from schemas.results import PeerCheck, ValidationRow

from test_stats import _run, _suite


def _with(suite, port, **update):
    cells = [c.model_copy(update=update) if c.port == port else c for c in suite.cells]
    return suite.model_copy(update={"cells": cells})


def _peer(suite, tool):
    s = _with(suite, "llamacpp", role="peer")
    check = PeerCheck(command=["build/llama-bench"], tool_tok_s=tool, row_tok_s=50.0, tolerance=0.1)
    return _with(s, "llamacpp", peer_check=check)


def test_ranking_is_fastest_first_with_intervals_against_the_fastest():
    s = _suite({"c": [10.0, 10.1, 9.9, 10.0, 10.2], "go": [5.0, 5.1, 4.9, 5.0, 5.05]})
    [g] = summary.groups(s)
    assert [e.port for e in g.ranking] == ["c", "go"] and g.ranking[0].vs_best is None
    r = g.ranking[1].vs_best
    assert 0.45 < r.low < r.value < r.high < 0.55
    assert "c is fastest at 10.0 tok/s" in summary.sentence(g) and "ahead of go" in summary.sentence(g)


def test_a_tie_is_called_a_tie():
    s = _suite({"c": [10.0, 10.5, 9.5, 10.2, 9.8], "rust": [10.1, 9.6, 10.4, 9.9, 10.0]})
    assert "tied with" in summary.sentence(summary.groups(s)[0])


def test_the_peer_at_its_best_is_the_better_of_row_and_own_tool():
    rates = {"c": [60.0] * 5, "llamacpp": [50.0] * 5}
    behind = summary.groups(_peer(_suite(rates), tool=70.0))[0]
    assert behind.peer.best == 70.0 and behind.peer.source == "llama-bench"
    assert abs(behind.vs_peer - 60 / 70) < 1e-9 and "0.86x of llamacpp at its best" in summary.sentence(behind)
    ahead = summary.groups(_peer(_suite(rates), tool=40.0))[0]
    assert ahead.peer.best == 50.0 and ahead.peer.source == "row" and ahead.vs_peer == 1.2
    failed = _with(_peer(_suite(rates), tool=None), "llamacpp",
                   peer_check=PeerCheck(command=["x"], tool_tok_s=None, row_tok_s=50.0, tolerance=0.1, problem="exit 1"))
    assert summary.groups(failed)[0].peer.best == 50.0
    assert "ahead of llama.cpp at its best in 0 of 1" in summary.overall(_peer(_suite(rates), tool=70.0))


def test_cells_above_the_roofline_are_probe_defects_not_targets_met():
    s = _suite({"c": [15.0] * 5, "go": [8.0] * 5}, gbs=10.0)  # 15 GB/s read against a 10 GB/s probe
    assert summary.probe_defects(s) == ["c m j=1 (150%)"]
    g = summary.groups(s)[0]
    assert "a probe defect, not a target met" in summary.sentence(g)
    assert summary.rows(s)[0]["best % roofline"] == "150% probe defect"
    page = html.build_page(s)
    assert "probe defect" in page[page.index('id="summary"'):page.index('id="setup"')]


def test_text_hashes_show_whether_every_port_wrote_the_same_tokens():
    s = _suite({"c": [10.0] * 3, "go": [9.0] * 3, "zig": [8.0] * 3})
    same = [r.model_copy(update={"text_sha256": "a" * 64}) for r in s.cells[0].runs]
    other = [r.model_copy(update={"text_sha256": "b" * 64}) for r in s.cells[0].runs]
    s = _with(_with(_with(s, "c", runs=same), "go", runs=same), "zig", runs=other)
    assert summary.text_note(summary.groups(s)[0]) == "texts differ: aaaaaaaa: c, go; bbbbbbbb: zig"
    s = _with(s, "zig", runs=same)
    assert summary.text_note(summary.groups(s)[0]) == "all 3 rows wrote the same text"


def test_validation_is_shown_first_and_a_failure_is_named():
    s = _suite({"c": [_run(10.0).tok_s] * 3})
    assert summary.validation_line(s) == "validation: not run with this suite"
    rows = [ValidationRow(port="c", case="stories260K/v0 (real)", ok=True),
            ValidationRow(port="go", case="stories260K/v0 (real)", ok=False, problem="logits differ")]
    line = summary.validation_line(s.model_copy(update={"validation": rows}))
    assert line.startswith("validation: 1 of 2 cases FAILED") and "go stories260K/v0 (real): logits differ" in line
    page = html.build_page(s.model_copy(update={"validation": rows[:1]}))
    top = page[page.index('id="summary"'):page.index('id="setup"')]
    assert "all 1 cases passed" in top
    assert "all 1 passed" in page[page.index('id="validation"'):]
