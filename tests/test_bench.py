"""The benchmark harness against fake ports: every way a port can misbehave is caught and
recorded with its reason; results survive interruption; files and exports round-trip."""
import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from orchestrator.bench import pipeline as bench
from orchestrator.errors import UsageError
from orchestrator.results import resultfile
from orchestrator.results.exporters import to_csv, to_hyperfine, to_markdown
from orchestrator.results.stats import geometric_mean, summarize, welch
from schemas.export import SCHEMAS, render
from schemas.results import Model as ResultModel
from schemas.results import FORMAT_VERSION, Suite

HERE = Path(__file__).parent
MATRIX = """[t]
models = ["stories260K"]
threads = [1, 2]
runs = 2
warmup = 1
steps = 16
timeout_s = 5
busy_share = 100  # these tests are about the checks, not the machine: the guard is tested in test_stats
"""


BEHAVIOURS = ("good", "crash", "hang", "no-stats", "lies-threads", "greedy-threads", "short", "slow-clock")


def _fake_port(impls: Path, name: str, behaviour: str, toolchain: str = 'check = ["true"]', contract: int = 1) -> None:
    d = impls / name
    d.mkdir(parents=True)
    (d / "port.toml").write_text(
        f'contract = {contract}\nname = "{name}"\nlanguage = "Fake"\nformats = ["v0"]\n[toolchain]\n{toolchain}\n'
        f'[run]\ncommand = ["{sys.executable}", "{HERE / "fakeport.py"}", "{behaviour}"]\n')


@pytest.fixture
def fake_impls(tmp_path, stories260k):
    """impls/ with one fake port per behaviour, and a matrix file beside it."""
    for behaviour in BEHAVIOURS + ("interrupt",):
        _fake_port(tmp_path / "impls", behaviour, behaviour)
    (tmp_path / "m.toml").write_text(MATRIX)
    return tmp_path


def _fake_host(threads, image=None, model_bytes=(1 << 28,), peaks=False):
    from schemas.results import Host, PeakProbe
    return Host(hostname="h", cpu_model="cpu", logical_cores=2, physical_cores=2, caches={}, memory_bytes=1,
                os="os", python="3", git_commit="abc", git_dirty=False, bandwidth_gbs={1: 10.0, 2: 12.0},
                bandwidth_probe_mib=max(model_bytes) >> 20,
                peaks=[PeakProbe(kind=k, threads=t, gops=g * t) for k, g in (("f32", 100.0), ("int8", 400.0))
                       for t in threads] if peaks else [])


def _run(tmp, validate=None, **kw):
    """The harness on fake ports. Validation against the reference is skipped with the flag, as
    --no-validate does, unless the test gives a `validate` function (or the real one)."""
    if not kw.get("resume"):
        kw.setdefault("ports", ",".join(BEHAVIOURS))
        kw.setdefault("matrix", "t")
        kw.setdefault("out", str(tmp / "r.json"))
    options = bench.Options(validate=validate is not None, **kw)
    return bench.main(options, matrices=tmp / "m.toml", impls=tmp / "impls", describe=_fake_host,
                      **({"validate": validate} if validate else {}))


def test_misbehaving_ports_fail_with_reasons(fake_impls):
    assert _run(fake_impls) == 0  # some cells failed, but others were measured
    assert _run(fake_impls, strict=True) == 1
    suite = resultfile.load(fake_impls / "r.json")
    cells = {(c.port, c.threads): c for c in suite.cells}
    assert len(cells) == 16
    assert cells[("good", 1)].status == "ok" and len(cells[("good", 1)].runs) == 2
    assert all(r.tok_s and r.tok_s > 0 for r in cells[("good", 2)].runs)
    reasons = {p: cells[(p, 1)].reason for p in ("crash", "hang", "no-stats", "short", "slow-clock")}
    assert "exit -6" in reasons["crash"] or "exit 134" in reasons["crash"]
    assert "timed out" in reasons["hang"]
    assert "no statistics line" in reasons["no-stats"]
    assert "asked for 16" in reasons["short"]
    assert "process that lived" in reasons["slow-clock"]
    for p in reasons:
        assert cells[(p, 1)].status == "failed" and not any(r.ok for r in cells[(p, 1)].runs)
    # thread honesty is a flag on runs that otherwise count (classified in test_thread_check)
    assert cells[("lies-threads", 2)].status == "ok" and cells[("greedy-threads", 1)].status == "ok"


def _proc(wall, cpu, max_threads=0):
    from orchestrator.process import ProcResult
    stats = {"port": "x", "prompt_tokens": 1, "generated_tokens": 16, "positions": 16, "threads": 0,
             "load_s": 0.01, "ttft_s": 0.01, "decode_s": wall * 0.9, "decode_tok_s": 15 / (wall * 0.9)}
    return ProcResult(["x"], 0, b"", "", wall, user_s=cpu, max_threads=max_threads, stats=stats)


_RECORD = ResultModel(name="m", path="m.bin", origin="synthetic", tokenizer_origin="synthetic", format="v0",
                      weight_bytes=1000)


@pytest.mark.parametrize("threads,wall,cpu,seen,verdict", [
    (1, 2.0, 2.0, 1, "ok"),
    (1, 2.0, 3.9, 2, "over"),    # asked for one thread, kept two cores busy
    (2, 2.0, 3.8, 3, "ok"),
    (2, 2.0, 2.0, 1, "under"),   # asked for two, used one
    (2, 2.0, 3.0, 1, "under"),   # busy, but never more than one thread alive
    (2, 0.1, 0.1, 1, "unchecked"),  # too short to tell
])
def test_thread_check(threads, wall, cpu, seen, verdict):
    from orchestrator.bench.measure import CellSpec, check
    proc = _proc(wall, cpu, seen)
    proc.stats["threads"] = threads
    spec = CellSpec(None, _RECORD, None, threads, 16, 0.0, 0.9, 1)
    run = check(proc, spec)
    assert run.ok, run.problem
    assert run.thread_check == verdict


@pytest.mark.parametrize("others,busy", [(None, False), (0.0, False), (0.2, False), (0.3, True), (1.5, True)])
def test_quiet_machine_guard_marks_runs(others, busy):
    from orchestrator.bench.measure import CellSpec, check
    proc = _proc(2.0, 2.0, 1)
    proc.stats["threads"] = 1
    proc.others_cpu_s = others
    run = check(proc, CellSpec(None, _RECORD, None, 1, 16, 0.0, 0.9, 1), busy_share=0.1)
    assert run.ok and run.busy is busy  # 0.05 s + 10% of a 2 s run = 0.25 s of other processes' CPU


def test_runs_are_interleaved(fake_impls, monkeypatch):
    log = fake_impls / "order.log"
    monkeypatch.setenv("FAKE_ORDER_LOG", str(log))
    _run(fake_impls, ports="good,short,lies-threads", threads="1")
    # warmup round then two measured rounds; 'short' fails in the warmup and is not run again
    order = log.read_text().split()
    assert order == ["good", "short", "lies-threads", "good", "lies-threads", "good", "lies-threads"]


def test_interrupted_suite_keeps_results_and_resumes(fake_impls, monkeypatch):
    import signal
    # Python leaves SIGINT ignored when it starts with it ignored, as a shell's background job
    # (`cmd &`) does: Ctrl-C's KeyboardInterrupt is what this test is about, so ask for it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setenv("FAKE_INTERRUPT_FLAG", str(fake_impls / "interrupted"))
    try:
        _interrupted_then_resumed(fake_impls)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted_then_resumed(fake_impls):
    assert _run(fake_impls, ports="good,interrupt") == 130  # SIGINT inside the second block
    kept = resultfile.load(fake_impls / "r.json")
    finished = [c for c in kept.cells if c.status == "ok"]
    assert {(c.port, c.threads) for c in finished} == {("good", 1), ("interrupt", 1)}
    [partial] = [c for c in kept.cells if c.port == "good" and c.threads == 2]
    assert partial.status == "incomplete" and len(partial.warmup) == 1  # the run finished before it is kept
    assert _run(fake_impls, resume=str(fake_impls / "r.json")) == 0  # the file alone says what to continue
    resumed = resultfile.load(fake_impls / "r.json")
    assert {(c.port, c.threads, c.status) for c in resumed.cells} == {
        (p, t, "ok") for p in ("good", "interrupt") for t in (1, 2)}
    # the finished cells were kept, not re-measured
    before = {(c.port, c.threads): c.runs for c in finished}
    assert all(c.runs == before[(c.port, c.threads)] for c in resumed.cells if c.threads == 1)


def test_a_port_without_toolchain_is_skipped_and_the_rest_are_measured(fake_impls):
    impls = fake_impls / "impls"
    _fake_port(impls, "absent", "good", 'check = ["false"]\ninstall = ["false"]')
    flag = fake_impls / "installed"
    _fake_port(impls, "installable", "good", f'check = ["test", "-f", "{flag}"]\ninstall = ["touch", "{flag}"]')
    assert _run(fake_impls, ports="good,absent,installable", threads="1", install=True) == 0
    cells = {c.port: c for c in resultfile.load(fake_impls / "r.json").cells}
    assert cells["good"].status == cells["installable"].status == "ok"
    assert cells["absent"].status == "failed" and "toolchain could not be installed" in cells["absent"].reason
    assert flag.exists()
    assert _run(fake_impls, ports="absent", threads="1") == 1  # nothing could run


@pytest.mark.parametrize("reported,agrees", [(300.0, True), (30000.0, False)])
def test_a_peer_row_is_checked_against_its_own_tool(fake_impls, reported, agrees):
    impls = fake_impls / "impls"
    tool = f'["{sys.executable}", "-c", "import json; print(json.dumps([{{\'avg_ts\': {reported}}}]))", "{{model}}"]'
    _fake_port(impls, "peer", "good")
    manifest = impls / "peer" / "port.toml"
    manifest.write_text(manifest.read_text().replace('language = "Fake"', 'language = "Fake"\nrole = "peer"')
                        + f'[peer_check]\ncommand = {tool}\ntok_s = "0.avg_ts"\ntolerance = 0.9\n')
    assert _run(fake_impls, ports="good,peer", threads="1") == 0
    cells = {c.port: c for c in resultfile.load(fake_impls / "r.json").cells}
    check = cells["peer"].peer_check
    assert cells["good"].peer_check is None and check.tool_tok_s == reported
    assert check.command[-1].endswith(".bin")  # {model} became the cell's model file
    assert check.agrees is agrees
    assert ("DISAGREES" in to_markdown(resultfile.load(fake_impls / "r.json"))) is not agrees


def test_skip_leaves_ports_out(fake_impls):
    _run(fake_impls, ports="good,crash", skip="crash", threads="1")
    assert {c.port for c in resultfile.load(fake_impls / "r.json").cells} == {"good"}
    with pytest.raises(UsageError, match="no port left"):
        _run(fake_impls, ports="good", skip="good")


def test_resume_refuses_another_matrix(fake_impls):
    _run(fake_impls, ports="good", threads="1")
    with pytest.raises(UsageError, match=r"run with other flags: --threads 2 \(the file's: 1\)"):
        _run(fake_impls, ports="good", threads="2", resume=str(fake_impls / "r.json"))


@pytest.mark.parametrize("flags,field", [({"runs": "0"}, "runs"), ({"threads": "0"}, "threads"),
                                         ({"steps": "x"}, "--steps"), ({"models": "stories7B"}, "unknown model")])
def test_bad_flags_name_the_field_before_anything_runs(fake_impls, flags, field):
    with pytest.raises(UsageError, match=field):
        _run(fake_impls, **flags)
    assert not (fake_impls / "r.json").exists()


def test_unknown_matrix(fake_impls):
    with pytest.raises(UsageError, match="unknown matrix"):
        bench.main(bench.Options(matrix="nope", validate=False), matrices=fake_impls / "m.toml",
                   impls=fake_impls / "impls")


def test_named_matrices_are_valid():
    for name in ("quick", "default", "paper", "full"):
        m = bench.load_matrix(name, {})
        assert m.runs >= 1
    paper = bench.load_matrix("paper", {})
    assert paper.models == ["stories15M", "stories42M", "stories110M"] and paper.temperature == 0
    assert paper.steps == 256 and paper.thread_counts()[0] == 1 and paper.thread_counts()[-1] == os.cpu_count()


def test_result_file_round_trip_and_exports(fake_impls):
    _run(fake_impls, ports="good,crash")
    suite = resultfile.load(fake_impls / "r.json")
    assert Suite.model_validate_json(suite.model_dump_json()) == suite
    rows = list(csv.DictReader(io.StringIO(to_csv(suite))))
    assert {r["port"] for r in rows} == {"good", "crash"}
    good = next(r for r in rows if r["port"] == "good" and r["threads"] == "1")
    assert float(good["tok_s_mean"]) > 0 and float(good["roofline_share"]) > 0
    hf = json.loads(to_hyperfine(suite))
    assert all(len(r["times"]) == len(r["exit_codes"]) for r in hf["results"])
    assert "| good" in to_markdown(suite)
    assert (fake_impls / "r.csv").exists() and (fake_impls / "r-stories260K-toks.png").stat().st_size > 1000


def test_bad_result_files_are_one_line_errors(tmp_path):
    from orchestrator.errors import PolyllamaError
    (tmp_path / "x.json").write_text("{]")
    with pytest.raises(PolyllamaError, match="not a JSON"):
        resultfile.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"format_version": 99}')
    with pytest.raises(PolyllamaError, match="version 99"):
        resultfile.load(tmp_path / "y.json")


def test_exported_json_schemas_are_current():
    for name, model in SCHEMAS.items():
        assert (Path(__file__).parent.parent / "schemas" / name).read_text() == render(model), \
            f"schemas/{name} is stale: run python -m schemas.export"


def test_statistics_on_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.median, s.min, s.max) == (2.5, 2.5, 1.0, 4.0)
    assert s.sd == pytest.approx(1.2909944)
    assert summarize([]) is None
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert welch([10, 10.1, 9.9, 10.05], [12, 12.1, 11.9, 12.05]).p < 0.05
    assert welch([10, 11, 9, 10.5], [10.2, 9.5, 10.8, 10.1]).p > 0.05


def test_overhead_measurement_times_the_same_command_both_ways(tmp_path):
    import shutil

    from conftest import need

    from orchestrator.bench.overhead import measure_overhead
    if shutil.which("hyperfine") is None:
        need("hyperfine is not installed")
    res = measure_overhead([sys.executable, str(HERE / "fakeport.py"), "good", "x", "-n", "16"], tmp_path, rounds=3)
    assert len(res["harness_times"]) == len(res["hyperfine_times"]) == 3
    assert min(res["harness_times"] + res["hyperfine_times"]) >= 0.05  # both saw the port's work
    # the port's statistics line was read under both timers
    assert all(res["harness_tok_s"]) and all(res["hyperfine_tok_s"]) and res["tok_s"].n == 3
    assert res["wall"].low <= res["wall"].value <= res["wall"].high


def test_paired_ratio_interval():
    from orchestrator.results.stats import paired_ratio
    r = paired_ratio([1.01, 1.02, 1.00, 1.01], [1.0, 1.0, 1.0, 1.0])
    assert r.value == pytest.approx(1.01, abs=1e-3) and r.low < r.value < r.high and r.n == 4
    # t with 3 degrees of freedom: 3.182 x sd / sqrt(n) on the log scale
    import math
    import statistics
    logs = [math.log(x) for x in (1.01, 1.02, 1.00, 1.01)]
    assert math.log(r.high) - math.log(r.value) == pytest.approx(3.1824 * statistics.stdev(logs) / 2, rel=1e-3)


def test_peak_memory_is_the_ports_own_not_the_harness():
    """The kernel carries the forked harness's high-water mark across exec into ru_maxrss; the
    executor reads the port's own VmHWM instead."""
    from orchestrator.process import execute
    ballast = bytearray(600 << 20)  # the harness holds 600 MiB, as it does after a GGUF export
    ballast[::4096] = b"x" * len(ballast[::4096])
    r = execute([sys.executable, "-c", "import time; b = bytearray(100 << 20); time.sleep(0.6)"])
    assert 100 << 10 < r.max_rss_kib < 400 << 10, r.max_rss_kib
    del ballast


# ---------------------------------------------------------------- weight types
def test_weight_types_run_q8_0_cells_for_the_ports_that_read_gguf_q8_0(fake_impls):
    impls = fake_impls / "impls"
    _fake_port(impls, "q8reader", "good")
    manifest = impls / "q8reader" / "port.toml"
    manifest.write_text(manifest.read_text().replace('formats = ["v0"]', 'formats = ["v0", "gguf-q8_0"]'))
    seen = {}

    def describe(threads, image=None, model_bytes=(1 << 28,), peaks=False):
        seen["sizes"] = model_bytes
        return _fake_host(threads, image, model_bytes)

    options = bench.Options(matrix="t", out=str(fake_impls / "r.json"), ports="good,q8reader", threads="1",
                            types="f32,q8_0", validate=False)
    assert bench.main(options, matrices=fake_impls / "m.toml", impls=impls, describe=describe) == 0
    suite = resultfile.load(fake_impls / "r.json")
    assert suite.format_version == FORMAT_VERSION and suite.matrix.types == ["f32", "q8_0"]
    cells = {(c.port, c.model.weight_type): c for c in suite.cells}
    assert set(cells) == {("good", "f32"), ("q8reader", "f32"), ("q8reader", "q8_0")}  # good does not list it
    q8, f32 = cells[("q8reader", "q8_0")], cells[("q8reader", "f32")]
    assert q8.status == "ok" and q8.model.format == "gguf-q8_0" and q8.model.path.endswith(".q8_0.gguf")
    assert "-z" not in q8.argv and q8.model.path in q8.argv  # the GGUF brings its tokenizer
    assert all(r.weight_type == "q8_0" for r in q8.warmup + q8.runs) and all(r.weight_type == "f32" for r in f32.runs)
    # the roofline of a q8_0 cell is the Q8_0 file's bytes, and the host was probed at that size too
    from orchestrator.formats import read_model
    assert q8.model.weight_bytes == read_model(q8.model.path).tensor_bytes() < f32.model.weight_bytes / 2
    assert set(seen["sizes"]) == {q8.model.weight_bytes, f32.model.weight_bytes}
    text = to_markdown(suite)
    assert "weight types side by side" in text and "q8_0/f32 [95% CI]" in text and "stories260K q8_0" in text
    rows = list(csv.DictReader(io.StringIO(to_csv(suite))))
    assert {(r["port"], r["weight_type"]) for r in rows} == set(cells)
    # a resumed suite keeps the cells of both types apart
    assert bench.main(bench.Options(**{**options.__dict__, "resume": options.out}), matrices=fake_impls / "m.toml",
                      impls=impls, describe=describe) == 0
    assert len(resultfile.load(fake_impls / "r.json").cells) == 3


def test_type_table_shows_the_speedup_over_f32():
    from orchestrator.results.report import type_rows
    from schemas.matrix import Matrix
    from schemas.results import Cell, Run

    def cell(wt, tok):
        model = ResultModel(name="m", path="m", origin="synthetic", tokenizer_origin=None, weight_type=wt,
                            format="gguf-q8_0" if wt == "q8_0" else "v0", weight_bytes=100 if wt == "q8_0" else 400)
        runs = [Run(wall_s=1, user_s=1, sys_s=0, max_rss_kib=1, max_threads=1, returncode=0, tok_s=tok * f,
                    weight_type=wt) for f in (0.99, 1.0, 1.01)]
        return Cell(port="c", language="C", role="port", model=model, threads=1, steps=8, argv=[], runs=runs,
                    status="ok")

    suite = Suite(suite_id="s", started="now", matrix_name="t", host=_fake_host([1]), ports=[],
                  matrix=Matrix(models=["m"], threads=[1], types=["f32", "q8_0"]),
                  cells=[cell("f32", 100.0), cell("q8_0", 300.0)])
    [row] = type_rows(suite)
    assert row["port"] == "c" and row["q8_0/f32 [95% CI]"].startswith("3.00x [")
    from orchestrator.results.html import build_page
    assert "Weight types side by side" in build_page(suite) and "3.00x [" in build_page(suite)
    assert type_rows(suite.model_copy(update={"matrix": Matrix(models=["m"], threads=[1])})) == []


def test_bad_weight_types_are_refused_before_anything_runs(fake_impls):
    with pytest.raises(UsageError, match="types"):
        _run(fake_impls, types="q4")
    with pytest.raises(UsageError, match="repeat"):
        _run(fake_impls, types="f32,f32")


def test_format_2_files_still_load_as_f32(fake_impls):
    _run(fake_impls, ports="good", threads="1")
    data = json.loads((fake_impls / "r.json").read_text())
    data["format_version"] = 2
    del data["matrix"]["types"]
    for c in data["cells"]:
        del c["model"]["weight_type"]
        for r in c["runs"] + c["warmup"]:
            del r["weight_type"]
    (fake_impls / "old.json").write_text(json.dumps(data))
    old = resultfile.load(fake_impls / "old.json")
    assert old.format_version == 2 and old.cells[0].key == ("good", "stories260K", "f32", 1, "tg16")
    assert old.cells[0].model.label == "stories260K"


# ---------------------------------------------------------------- results first
def test_every_run_records_the_hash_of_the_text_it_wrote(fake_impls):
    import hashlib
    _run(fake_impls, ports="good,crash", threads="1")
    cells = {c.port: c for c in resultfile.load(fake_impls / "r.json").cells}
    wrote = hashlib.sha256(b"once upon a time\n").hexdigest()  # what tests/fakeport.py prints
    assert [r.text_sha256 for r in cells["good"].warmup + cells["good"].runs] == [wrote] * 3
    # a crashed run's output is hashed too (here: nothing), so a report can tell it apart
    assert cells["crash"].warmup[0].text_sha256 == hashlib.sha256(b"").hexdigest()


def test_a_run_killed_on_its_timeout_has_no_text_hash():
    from orchestrator.bench.measure import CellSpec, check
    proc = _proc(2.0, 2.0, 1)
    proc.timed_out, proc.returncode, proc.stdout = True, None, b"once upon"
    run = check(proc, CellSpec(None, _RECORD, None, 1, 16, 0.0, 0.9, 1))
    assert not run.ok and run.text_sha256 is None


def test_resume_takes_every_flag_from_the_file(fake_impls):
    """`--resume FILE` alone: the matrix, its name and the ports as the file records them, even
    when the named matrix has changed since (matrices.toml is not read again)."""
    assert _run(fake_impls, ports="good,lies-threads,crash", skip="crash", threads="1", runs="3", warmup="0",
                steps="8") == 0
    path = fake_impls / "r.json"
    first = resultfile.load(path)
    data = json.loads(path.read_text())
    data["cells"] = [c for c in data["cells"] if c["port"] == "good"]  # as if lies-threads had not run yet
    path.write_text(json.dumps(data))
    (fake_impls / "m.toml").write_text(MATRIX.replace("runs = 2", "runs = 1"))
    assert _run(fake_impls, resume=str(path)) == 0
    resumed = resultfile.load(path)
    assert (resumed.matrix_name, resumed.matrix) == ("t", first.matrix)
    assert [p.name for p in resumed.ports] == ["good", "lies-threads"]  # --skip crash held
    assert (resumed.suite_id, resumed.started) == (first.suite_id, first.started)
    cells = {c.port: c for c in resumed.cells}
    assert set(cells) == {"good", "lies-threads"}
    assert cells["good"].runs == next(c for c in first.cells if c.port == "good").runs  # kept, not re-run
    again = cells["lies-threads"]
    assert (again.status, len(again.runs), len(again.warmup), again.steps, again.threads) == ("ok", 3, 0, 8, 1)


@pytest.mark.parametrize("flags,said", [
    ({"matrix": "quick"}, "--matrix quick (the file's: t)"),
    ({"ports": "good,crash"}, "--ports/--skip select good,crash (the file's: good)"),
    ({"skip": "good"}, "--ports/--skip select nothing"),
    ({"models": "stories15M"}, "--models stories15M (the file's: stories260K)"),
    ({"threads": "1,2"}, "--threads 1,2 (the file's: 1)"),
    ({"runs": "5"}, "--runs 5 (the file's: 2)"),
    ({"warmup": "0"}, "--warmup 0 (the file's: 1)"),
    ({"steps": "32"}, "--steps 32 (the file's: 16)"),
    ({"types": "f32,q8_0"}, "--types f32,q8_0 (the file's: f32)"),
    ({"out": "elsewhere.json"}, "--out elsewhere.json"),
])
def test_resume_refuses_a_flag_that_contradicts_the_file(fake_impls, flags, said):
    _run(fake_impls, ports="good", threads="1")
    path = fake_impls / "r.json"
    before = path.read_text()
    with pytest.raises(UsageError) as e:
        _run(fake_impls, resume=str(path), **flags)
    assert said in str(e.value) and "give --resume alone" in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == before  # refused before anything ran or was saved


def test_resume_accepts_flags_that_agree_with_the_file(fake_impls):
    _run(fake_impls, ports="good", threads="1")
    path = fake_impls / "r.json"
    assert _run(fake_impls, resume=str(path), matrix="t", ports="good", threads="1", runs="2", steps="16",
                types="f32", out=str(path), skip="crash") == 0


@pytest.mark.parametrize("content,said", [(None, "no such result file"), ("{]", "not a JSON result file"),
                                          ('{"rows": []}', "result format version None")])
def test_resume_of_a_missing_or_foreign_file_is_one_error(fake_impls, content, said):
    from orchestrator.errors import PolyllamaError
    path = fake_impls / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolyllamaError, match=said):
        _run(fake_impls, resume=str(path))


def _rows(*problems):
    from schemas.results import ValidationRow
    return [ValidationRow(port="good", case=f"stories260K (real) v0 #{i}", ok=not p, problem=p)
            for i, p in enumerate(problems)]


def test_bench_validates_its_ports_first_and_keeps_the_rows(fake_impls):
    calls = []

    def validate(ports, formats, runner):
        calls.append(([p.name for p in ports], formats, runner))
        path = fake_impls / "r.json"
        assert resultfile.load(path).cells == []  # before anything is measured
        return _rows("", "logits beyond tolerance")

    assert _run(fake_impls, ports="good,crash", skip="crash", threads="1", validate=validate) == 0
    assert calls == [(["good"], ["v0"], None)]  # the suite's ports and the formats its cells read
    suite = resultfile.load(fake_impls / "r.json")
    assert suite.validation == _rows("", "logits beyond tolerance")
    [cell] = suite.cells
    assert cell.status == "ok" and len(cell.runs) == 2  # a port that fails validation is measured all the same
    # --no-validate: no validation, and the suite says so (None, not an empty list)
    _run(fake_impls, ports="good", threads="1")
    assert resultfile.load(fake_impls / "r.json").validation is None


def test_a_resumed_suite_keeps_its_validation_unless_it_validates_again(fake_impls):
    path = fake_impls / "r.json"
    _run(fake_impls, ports="good", threads="1", validate=lambda ports, formats, runner: _rows(""))
    _run(fake_impls, resume=str(path))  # --no-validate: the file's rows stay
    assert resultfile.load(path).validation == _rows("")
    _run(fake_impls, resume=str(path), validate=lambda ports, formats, runner: _rows("greedy text differs"))
    assert resultfile.load(path).validation == _rows("greedy text differs")


def test_bench_validation_against_the_reference_fails_a_fake_port_and_measures_it(fake_impls):
    """The real validation (ports/validate.py) on stories260K: the fake port writes no logits, so
    it fails, and its cells are measured all the same."""
    assert _run(fake_impls, ports="good", threads="1", validate=bench.validate_ports) == 0
    suite = resultfile.load(fake_impls / "r.json")
    [row] = suite.validation  # stories260K v0 only: the one format the suite's cells read
    assert row.port == "good" and row.case.startswith("stories260K (real) v0") and not row.ok
    assert "logits file has 0 floats" in row.problem
    assert [c.status for c in suite.cells] == ["ok"]


def test_exports_carry_the_suite_in_every_row_and_append(fake_impls):
    import shlex

    from orchestrator.results.exporters import RUN_KEYS, to_runs_jsonl
    _run(fake_impls, ports="good,crash", threads="1", warmup="0", out=str(fake_impls / "a.json"))  # crash: a measured run fails
    _run(fake_impls, ports="good", threads="1,2", out=str(fake_impls / "b.json"))
    a, b = resultfile.load(fake_impls / "a.json"), resultfile.load(fake_impls / "b.json")
    # CSV: every row says which suite, machine and commit it came from, under the same header
    csv_a, csv_b = to_csv(a).splitlines(), to_csv(b).splitlines()
    assert csv_a[0] == csv_b[0]
    assert csv_a[0].startswith("suite_id,started,hostname,cpu_model,git_commit,port,")
    rows = list(csv.DictReader(io.StringIO("\n".join(csv_a + csv_b[1:]))))
    assert {(r["suite_id"], r["port"]) for r in rows} == {("a", "good"), ("a", "crash"), ("b", "good")}
    assert all((r["started"], r["hostname"], r["cpu_model"], r["git_commit"]) ==
               ((a if r["suite_id"] == "a" else b).started, "h", "cpu", "abc") for r in rows)
    # JSONL: one flat object per measured run, the same keys in the same order in both suites
    appended = fake_impls / "all.runs.jsonl"
    for name in ("a", "b"):
        with appended.open("a") as f:
            f.write((fake_impls / f"{name}.runs.jsonl").read_text())  # written beside the other exports
    lines = [json.loads(line) for line in appended.read_text().splitlines()]
    assert all(tuple(line) == RUN_KEYS for line in lines)
    assert len(lines) == sum(len(c.runs) for s in (a, b) for c in s.cells) == 2 + 1 + 2 * 2
    good = [line for line in lines if line["suite_id"] == "b" and line["threads"] == 2]
    assert [line["run"] for line in good] == [0, 1] and all(line["ok"] and line["tok_s"] > 0 for line in good)
    assert all(len(line["text_sha256"]) == 64 for line in good) and good[0]["hostname"] == "h"
    crashed = [line for line in lines if line["port"] == "crash"]
    assert crashed and all(not line["ok"] and line["problem"] for line in crashed)
    assert to_runs_jsonl(a) == (fake_impls / "a.runs.jsonl").read_text()
    # hyperfine: a readable label as the command, the argv among the parameters
    hf = json.loads(to_hyperfine(b))
    cells = {c.threads: c for c in b.cells}
    assert [r["command"] for r in hf["results"]] == ["good stories260K f32 -j 1", "good stories260K f32 -j 2"]
    assert all(r["parameters"]["argv"] == shlex.join(cells[int(r["parameters"]["threads"])].argv)
               for r in hf["results"])


def test_a_pp_test_measures_the_prefill_against_the_compute_peak(tmp_path, stories260k):
    """--tests tg16,pp512: a pp cell per port reads a prompt of exactly its positions (capped at the
    context: stories260K's 512), is rated by its prefill, held against the host's f32 peak; a
    contract-1 port has no prefill to measure and says so; the tg cells are as before."""
    from orchestrator.bench.prompts import prompt_text
    from orchestrator.formats import read_model
    _fake_port(tmp_path / "impls", "batched", "good", contract=2)
    _fake_port(tmp_path / "impls", "old", "good")
    (tmp_path / "m.toml").write_text(MATRIX)
    assert _run(tmp_path, ports="batched,old", threads="1", tests="tg16,pp9999") == 0
    suite = resultfile.load(tmp_path / "r.json")
    seq_len = read_model(stories260k.path).config.seq_len
    pp = {c.port: c for c in suite.cells if c.prefill}
    assert sorted(c.test_name for c in suite.cells) == sorted(["tg16", "tg16", f"pp{seq_len}", f"pp{seq_len}"])
    cell = pp["batched"]
    assert cell.status == "ok" and cell.steps == seq_len and cell.label == f"stories260K pp{seq_len}"
    assert cell.argv[cell.argv.index("-i") + 1] == prompt_text(str(stories260k.tokenizer), 512, seq_len)
    assert all(r.tok_s == pytest.approx(seq_len / r.stats.prefill_s) for r in cell.runs)
    assert suite.host.peak_for("f32", 1) == 100.0 and cell.flops_per_token > 0
    from orchestrator.results.summary import roofline
    share = roofline(suite, cell)
    assert share == pytest.approx(sum(r.tok_s for r in cell.runs) / len(cell.runs) * cell.flops_per_token / 100e9)
    assert pp["old"].status == "failed" and "contract 1" in pp["old"].reason
