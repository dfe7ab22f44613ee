"""The command line as a whole: --skip on every task that takes --ports, --out as the one
file a task writes, --exports-dir for report's folder, and bad input as one error line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Context, Exit

import tasks
from orchestrator import app
from orchestrator.ports import validate as validation
from orchestrator.results import resultfile
from schemas.results import ValidationRow

ROOT = Path(__file__).resolve().parent.parent


def _invoke(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _one_error_line(r, code, said):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], r.stderr


# ---------------------------------------------------------------- --skip on every task with --ports
def test_build_all_skips(monkeypatch):
    built = []
    monkeypatch.setattr(app, "build_all", lambda ports, jobs, progress, arch: built.extend(p.name for p in ports) or [])
    tasks.build_all(Context(), ports="python,c,rust", skip="c")
    assert built == ["python", "rust"]
    with pytest.raises(Exit):  # --skip that leaves nothing is refused, not an empty build
        tasks.build_all(Context(), ports="c", skip="c")


def _fake_rows(seen):
    def fake(ports, store, models, progress=print, runner=None, emulated=False, formats=validation.FORMATS):
        seen.extend(p.name for p in ports)
        return [validation.Row(p.name, "stories260K (real) v0", max_abs_diff=1e-6, tolerance=1e-4,
                               argmax_agree="24/24", greedy_identical="yes") for p in ports] + \
               [validation.Row("python", "stories260K (real) gguf", problem="greedy text differs")]
    return fake


def test_validate_skips(monkeypatch):
    seen = []
    monkeypatch.setattr(app, "run_validation", _fake_rows(seen))
    with pytest.raises(Exit):  # one row fails: exit 1
        tasks.validate(Context(), ports="python,c,go", skip="go,c")
    assert seen == ["python"]


def test_test_task_skips_in_build_and_port_tests(monkeypatch):
    calls = []
    monkeypatch.setattr(app, "build", lambda ports, **kw: calls.append(("build", ports, kw)) or 0)
    monkeypatch.setattr(app, "port_tests", lambda ports, **kw: calls.append(("port_tests", ports, kw)) or 0)
    monkeypatch.setattr(app, "pytest", lambda args: calls.append(("pytest", args)) or 0)
    tasks.test(Context(), ports="c,cpp", skip="c", pytest_args="-q -x")
    assert calls == [("build", "c,cpp", {"skip": "c"}), ("port_tests", "c,cpp", {"skip": "c"}),
                     ("pytest", ["-q", "-x"])]


def test_port_tests_leave_the_skipped_ports_out(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(app.subprocess, "run", lambda argv, cwd, **kw: ran.append(cwd) or
                        subprocess.CompletedProcess(argv, 0))
    from orchestrator.ports.discover import Port
    monkeypatch.setattr(Port, "outputs_present", lambda self: True)
    assert app.port_tests("c,cpp", skip="c") == 0
    assert ran and all(Path(d).name == "cpp" for d in ran)
    assert "[c]" not in capsys.readouterr().out


def test_lever_skips_and_writes_its_out_file(monkeypatch, tmp_path, stories260k):
    def measure(cells, off_env, rounds, log=print):
        for c in cells:
            c.off, c.on = [100.0, 101.0, 99.0], [110.0, 111.0, 109.0]
        return cells

    monkeypatch.setattr(app, "measure_lever", measure)
    out = tmp_path / "lever.json"
    tasks.lever(Context(), ports="python,c", skip="c", env="X=0", models="stories260K", threads="1", out=str(out))
    samples = json.loads(out.read_text())
    assert [c["cell"] for c in samples["cells"]] == ["python stories260K -j 1"]


def _task_flags() -> dict[str, dict[str, str]]:
    """Each task's flags and their help, as `invoke --help` shows them (read in a fresh process:
    invoke hands each flag's help over once, on the first look)."""
    code = ("import json, tasks\n"
            "ts = [*tasks.ns.tasks.values(), *tasks.ns.collections['models'].tasks.values()]\n"
            "print(json.dumps({t.name: {a.name: a.help or '' for a in t.get_arguments()} for t in ts}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_the_tasks_that_take_ports_all_take_skip():
    flags = _task_flags()
    for name in ("install", "build_all", "validate", "bench", "lever", "test"):
        assert {"ports", "skip"} <= set(flags[name]), name
        assert "(default: none)" in flags[name]["skip"]


def test_every_flag_says_its_default_or_that_it_is_required():
    missing = [f"{task} --{flag}" for task, flags in _task_flags().items() for flag, text in flags.items()
               if "(default:" not in text and "(required)" not in text]
    assert not missing, missing
    flags = _task_flags()
    assert "quick|default|paper|full|prompt|scale (default: default" in flags["bench"]["matrix"]
    assert "(default: on; --no-validate skips it)" in flags["bench"]["validate"]


# ---------------------------------------------------------------- --out: the one file a task writes
def test_validate_out_saves_the_rows(monkeypatch, tmp_path):
    from orchestrator.results.html import load_validation
    monkeypatch.setattr(app, "run_validation", _fake_rows([]))
    out = tmp_path / "sub" / "rows.json"
    assert app.validate("python,c", out=str(out)) == 1  # the failing row fails the task, and is saved
    data = json.loads(out.read_text())
    assert (data["format"], data["version"]) == ("polyllama-validation", 1)
    rows = [ValidationRow.model_validate(r) for r in data["rows"]]
    assert [(r.port, r.ok) for r in rows] == [("python", True), ("c", True), ("python", False)]
    assert rows[0].max_abs_diff == 1e-6 and rows[0].greedy_identical == "yes"
    assert rows[2].problem == "greedy text differs"
    assert load_validation(out) == data["rows"]  # what `invoke report --validation` reads


def test_a_row_becomes_a_validation_row_field_for_field():
    row = validation.Row("c", "case", 1e-6, 1e-4, "24/24", "yes", "NO", "sampled text differs", "a note", False)
    record = row.record()
    assert record.model_dump() == {"port": "c", "case": "case", "ok": False, "max_abs_diff": 1e-6,
                                   "tolerance": 1e-4, "argmax_agree": "24/24", "greedy_identical": "yes",
                                   "sampled_identical": "NO", "problem": "sampled text differs", "note": "a note",
                                   "report_only": False}
    # every field of the schema's row is filled from the Row (none left at its default by omission)
    assert set(ValidationRow.model_fields) == set(record.model_dump())
    assert validation.Row("llamacpp", "q8", problem="refused", report_only=True).record().ok


def test_validate_out_naming_a_folder_is_refused_before_validating(tmp_path):
    r = _invoke("validate", "--ports", "python", "--out", str(tmp_path))
    _one_error_line(r, 2, "--out names the file to write")


def test_report_writes_its_exports_into_exports_dir(tmp_path):
    from test_bench import _fake_host

    from schemas.matrix import Matrix
    from schemas.results import Suite
    suite = Suite(suite_id="s", started="2026-12-07T00:00:00+00:00", matrix_name="t", host=_fake_host([1]), ports=[],
                  matrix=Matrix(models=["m"], threads=[1]))
    resultfile.save(suite, tmp_path / "s.json")
    tasks.report(Context(), str(tmp_path / "s.json"), exports_dir=str(tmp_path / "exports"))
    assert {p.name for p in (tmp_path / "exports").iterdir()} >= {"s.csv", "s.runs.jsonl", "s.md", "s.hyperfine.json"}
    assert "--out" not in {f"--{a.name}" for a in tasks.report.get_arguments()}
    r = _invoke("report", str(tmp_path / "s.json"), "--exports-dir", str(tmp_path / "s.json"))
    _one_error_line(r, 2, "--exports-dir names a folder")


# ---------------------------------------------------------------- --resume FILE from the command line
def test_resume_of_a_missing_file_is_one_error_line(tmp_path):
    _one_error_line(_invoke("bench", "--resume", str(tmp_path / "nope.json")), 1, "no such result file")
    (tmp_path / "rows.json").write_text('{"format": "polyllama-validation", "version": 1, "rows": []}')
    _one_error_line(_invoke("bench", "--resume", str(tmp_path / "rows.json")), 1, "result format version None")


def test_resume_with_a_contradicting_flag_is_one_error_line(tmp_path):
    from test_bench import _fake_host

    from schemas.matrix import Matrix
    from schemas.results import PortInfo, Suite
    suite = Suite(suite_id="q", started="2026-12-07T00:00:00+00:00", matrix_name="quick", host=_fake_host([1]),
                  ports=[PortInfo(name="python", language="Python", role="reference", toolchain=None,
                                  build_flags="", build="built: ")],
                  matrix=Matrix(models=["stories260K"], threads=[1], runs=1, warmup=0, steps=32))
    resultfile.save(suite, tmp_path / "q.json")
    before = (tmp_path / "q.json").read_text()
    r = _invoke("bench", "--resume", str(tmp_path / "q.json"), "--threads", "2", "--matrix", "quick")
    _one_error_line(r, 2, "--threads 2 (the file's: 1); give --resume alone")
    assert (tmp_path / "q.json").read_text() == before
