"""The statistics the reports print: Welch's test against scipy's own, intervals for ratios, the
quiet-machine guard, the roofline flag, and `compare` as a CI gate."""
import json
import math

import pytest
from scipy import stats as st

from orchestrator import app
from orchestrator.results import compare, exporters, report
from orchestrator.results.stats import busy_runs, good_runs, metric, ratio_ci, welch
from schemas.matrix import Matrix
from schemas.results import Cell, Host, Model, PortStats, Probe, Run, Suite


def _run(tok_s: float, others: float = 0.0, wall: float = 2.0) -> Run:
    decode = 255 / tok_s
    stats = PortStats(port="p", prompt_tokens=1, generated_tokens=256, positions=256, threads=1, load_s=0.01,
                      ttft_s=0.01, decode_s=decode, decode_tok_s=255 / decode)
    return Run(wall_s=wall, user_s=wall, sys_s=0.0, max_rss_kib=1024, max_threads=1, returncode=0, stats=stats,
               tok_s=tok_s, others_cpu_s=others, busy=others > 0.05 + 0.1 * wall)


def _suite(rates: dict[str, list[float]], name="s", gbs=10.0) -> Suite:
    model = Model(name="m", path="/m.bin", origin="synthetic", tokenizer_origin="real", format="v0",
                  weight_bytes=10**9)
    host = Host(hostname="h", cpu_model="cpu", logical_cores=2, physical_cores=2, caches={}, memory_bytes=1,
                os="os", python="3", git_commit="abc", git_dirty=False, bandwidth_gbs={1: gbs},
                bandwidth_probe_mib=954, probes=[Probe(bytes=10**9, threads=1, streams=4, gbs=gbs)])
    cells = [Cell(port=p, language="L", role="port", model=model, threads=1, steps=256, argv=["x"],
                  runs=[_run(v) for v in values], status="ok") for p, values in rates.items()]
    return Suite(suite_id=name, started="t", matrix_name="t", matrix=Matrix(models=["m"], threads=[1]), host=host,
                 ports=[], cells=cells)


def test_welch_matches_scipy():
    a, b = [10.0, 10.4, 9.8, 10.1, 10.3], [11.0, 10.7, 11.4, 10.9]
    w = welch(a, b)
    ref = st.ttest_ind(b, a, equal_var=False)
    assert w.t == pytest.approx(ref.statistic) and w.p == pytest.approx(ref.pvalue)
    assert w.df == pytest.approx(ref.df) and w.df < len(a) + len(b) - 2  # Welch-Satterthwaite
    assert welch([1.0], [2.0, 3.0]) is None


def test_ratio_interval_covers_the_ratio_and_says_when_it_cannot():
    r = ratio_ci([100, 102, 98, 101, 99], [110, 112, 108, 111, 109])
    assert r.low < 1.10 < r.high and r.low > 1.0 and r.n == 5
    assert "[" in r.fmt()
    single = ratio_ci([100.0], [110.0])
    assert math.isnan(single.low) and "n<2" in single.fmt()


def test_busy_runs_are_kept_but_left_out_of_every_figure():
    suite = _suite({"c": [100, 101, 99, 100, 100]})
    cell = suite.cells[0]
    noisy = cell.model_copy(update={"runs": cell.runs + [_run(50, others=1.5)]})
    assert busy_runs(noisy) == 1 and len(good_runs(noisy)) == 5
    assert metric(noisy, "tok_s").mean == pytest.approx(100)
    text = report.render(suite.model_copy(update={"cells": [noisy]}))
    assert "busy:1/6 left out" in text and "warning: 1 runs" in text
    hf = json.loads(exporters.to_hyperfine(suite.model_copy(update={"cells": [noisy]})))
    assert len(hf["results"][0]["times"]) == 5 and hf["results"][0]["memory_usage_byte"] == [1024 * 1024] * 5


def test_roofline_is_per_model_size_and_a_cell_above_it_is_flagged():
    fast = _suite({"c": [15.0] * 5}, gbs=10.0)  # 15 tok/s x 1 GB = 15 GB/s against a 10 GB/s probe
    row = report.model_rows(fast, "m")[0]
    assert row["% roofline"] == "150% (probe defect)" and "a probe defect" in row["flags"]
    text = report.render(fast)
    assert "probe defect: 1 cells above 100%" in text and "not a target met" in text
    ok = _suite({"c": [8.0] * 5}, gbs=10.0)
    assert report.model_rows(ok, "m")[0]["% roofline"] == "80%"
    few = _suite({"c": [8.0, 8.1]})
    assert "n=2<5" in report.model_rows(few, "m")[0]["flags"]


def test_compare_fails_on_a_regression_beyond_threshold_and_noise(tmp_path):
    from orchestrator.results import resultfile
    base = [100.0, 101.0, 99.5, 100.5, 99.0]
    a = _suite({"c": base, "go": [50, 51, 49, 50, 50.5]}, "a")
    same = _suite({"c": [100.4, 99.2, 100.9, 99.8, 100.1], "go": [50.2, 49.5, 50.8, 50.1, 49.9]}, "b")
    slower = _suite({"c": [v * 0.9 for v in base], "go": [50, 51, 49, 50, 50.5]}, "c")
    for s in (a, same, slower):
        resultfile.save(s, tmp_path / f"{s.suite_id}.json")
    assert not compare.compare(a, same).regressions
    v = compare.compare(a, slower)
    assert [r.split(":")[0] for r in v.regressions] == ["c m j=1"]
    assert app.compare(str(tmp_path / "a.json"), str(tmp_path / "b.json")) == 0
    assert app.compare(str(tmp_path / "a.json"), str(tmp_path / "c.json")) == 1
    # a 10% regression does not fail a 20% threshold
    assert app.compare(str(tmp_path / "a.json"), str(tmp_path / "c.json"), threshold=0.2) == 0
