"""The report people look at: one self-contained HTML page per suite, checked in a real browser
(headless Chromium, network off: it must draw every chart without a script error and without
fetching anything), and the PNG/SVG figures kept for papers."""
import html
import json
import os
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import need

from orchestrator import app
from orchestrator.errors import PolyllamaError
from orchestrator.results import figures, resultfile
from orchestrator.results.html import ERROR_PROBE, NOT_RUN, build_page, write_page
from orchestrator.results.stats import good_runs
from schemas.matrix import Matrix
from schemas.results import Cell, Host, Model, PeerCheck, PortInfo, PortStats, Probe, Run, Suite

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "report-screenshot.png"

# name, language, role, tok/s on stories15M at one thread, how well it scales with threads
PORTS = [("c", "C", "port", 280, 0.9), ("cpp", "C++", "port", 285, 0.9), ("rust", "Rust", "port", 270, 0.85),
         ("zig", "Zig", "port", 265, 0.85), ("go", "Go", "port", 95, 0.6), ("java", "Java", "port", 140, 0.7),
         ("python", "Python", "reference", 190, 0.6), ("pytorch", "Python (PyTorch)", "port", 160, 0.1),
         ("llamacpp", "C++ (llama.cpp)", "peer", 150, 0.3), ("tensorflow", "Python (TensorFlow)", "port", 0, 0)]
MODELS = [("stories15M", "real", 60_766_848), ("stories110M", "synthetic", 438_061_824)]
THREADS = [1, 2, 4]
STEPS = 256


def _run(rng, tok_s, threads, rss_mib, busy=False):
    decode = (STEPS - 1) / tok_s
    load = rng.uniform(0.005, 0.02) if tok_s > 200 else rng.uniform(0.3, 1.2)
    ttft = 1.2 / tok_s
    stats = PortStats(port="p", prompt_tokens=1, generated_tokens=STEPS, positions=STEPS, threads=threads,
                      load_s=load, ttft_s=ttft, decode_s=decode, decode_tok_s=tok_s)
    wall = load + ttft + decode + rng.uniform(0.01, 0.05)
    return Run(wall_s=wall, user_s=wall * threads * 0.95, sys_s=0.02, max_rss_kib=int(rss_mib * 1024),
               max_threads=threads, returncode=0, stats=stats, tok_s=tok_s, thread_check="ok",
               others_cpu_s=1.5 if busy else 0.01, busy=busy, load_avg=0.3)


def realistic_suite() -> Suite:
    """A format-2 suite as `invoke bench` writes it: real and synthetic models, three thread counts,
    raw samples, roofline probes per size, a peer with its own tool's figure, a run on a busy
    machine, a port that did not build and a cell that failed half-way."""
    rng = random.Random(7)
    cells = []
    for model, origin, size in MODELS:
        scale = MODELS[0][2] / size
        m = Model(name=model, path=f"/models/{model}.bin", origin=origin, tokenizer_origin="real", format="v0",
                  weight_bytes=size)
        for name, language, role, base, eff in PORTS:
            for t in THREADS:
                cell = Cell(port=name, language=language, role=role, model=m, threads=t, steps=STEPS,
                            argv=[f"impls/{name}/run", m.path, "-n", str(STEPS), "-j", str(t)], status="ok")
                if name == "tensorflow":
                    cells.append(cell.model_copy(update={"status": "failed", "argv": [], "reason":
                                                         "not built: toolchain could not be installed: no wheel"}))
                    continue
                mean = base * scale * (1 + eff * (t - 1))
                rss = size / 2**20 + (600 if "Python" in language else 300 if name == "java" else 20)
                runs = [_run(rng, mean * rng.gauss(1, 0.02), t, rss * rng.uniform(1, 1.01)) for _ in range(5)]
                warmup = [_run(rng, mean * 0.97, t, rss)]
                update = {"runs": runs, "warmup": warmup}
                if name == "c" and model == "stories110M" and t == 4:
                    update["runs"] = runs + [_run(rng, mean * 0.5, t, rss, busy=True)]
                if name == "go" and model == "stories110M" and t == 4:
                    crashed = runs[2].model_copy(update={"returncode": -6, "problem": "exit -6 (SIGABRT)",
                                                          "stats": None, "tok_s": None})
                    update.update(runs=runs[:2] + [crashed], status="failed", reason="run 3: exit -6 (SIGABRT)")
                if role == "peer":
                    row = sum(r.tok_s for r in runs) / len(runs)
                    update["peer_check"] = PeerCheck(command=["llama-bench", "-m", m.path], tool_tok_s=row * 1.03,
                                                     row_tok_s=row, tolerance=0.1)
                cells.append(cell.model_copy(update=update))
    probes = [Probe(bytes=size, threads=t, streams=4, gbs=g * (1 + 0.8 * (t - 1)))
              for _, _, size in MODELS for t, g in zip(THREADS, (12.0, 12.0, 12.0))]
    probes = [p.model_copy(update={"gbs": p.gbs * (2.5 if p.bytes < 10**8 else 1)}) for p in probes]
    host = Host(hostname="bench-host", cpu_model="Intel(R) Xeon(R) Gold 6430", logical_cores=4, physical_cores=4,
                caches={"L1 Data": "48K", "L2 Unified": "2048K", "L3 Unified": "61440K"}, memory_bytes=32 * 2**30,
                os="Linux 6.1.0-18-amd64 (Debian 12)", python="3.11.2", git_commit="0123456789abcdef0123",
                git_dirty=False, bandwidth_gbs={1: 12.0, 2: 21.6, 4: 40.8}, bandwidth_probe_mib=418, probes=probes,
                cpu_governor="performance", cpu_mhz=2100.0)
    ports = [PortInfo(name=n, language=lang, role=role, toolchain=f"{lang.split()[0].lower()} 1.0",
                      build_flags="-O3 -march=native" if role != "peer" else "pip: llama-cpp-python",
                      build="skipped: toolchain could not be installed: no wheel" if n == "tensorflow" else "built: ok")
             for n, lang, role, *_ in PORTS]
    matrix = Matrix(description="every port x {15M, 110M} x {1, 2, 4 threads}", models=[m for m, *_ in MODELS],
                    threads=THREADS, runs=5, warmup=1, steps=STEPS)
    return Suite(suite_id="full-20261130-120000", started="2026-11-30T12:00:00+00:00",
                 finished="2026-11-30T12:41:07+00:00", matrix_name="full", matrix=matrix, host=host, ports=ports,
                 cells=cells)


@pytest.fixture(scope="module")
def suite():
    return realistic_suite()


@pytest.fixture(scope="module")
def page(suite):
    return build_page(suite)


# ---------------------------------------------------------------- the page, as text
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_page_is_self_contained(page):
    parser = _Tags()
    parser.feed(page)
    tags = parser.tags
    assert not [a for t, a in tags if t == "script" and a.get("src")], "a script is loaded from elsewhere"
    assert not [t for t, _ in tags if t in ("link", "iframe", "object", "embed")]
    refs = [a[k] for _, a in tags for k in ("src", "href") if a.get(k)]
    assert all(r.startswith(("#", "data:")) for r in refs), refs  # in-page anchors only
    assert page.count("* plotly.js v") == 1  # Plotly's bundle, inline, once
    assert "@import" not in page.split("<script>")[0] and "url(http" not in page.split("<script>")[0]
    assert sum(1 for t, a in tags if t == "div" and "plotly-graph-div" in a.get("class", "")) == 2 * 5


def test_the_header_card_says_where_the_numbers_come_from(suite, page):
    for text in ("bench-host", "Intel(R) Xeon(R) Gold 6430", "4 logical, 4 physical", "L3 Unified 61440K",
                 "Linux 6.1.0-18-amd64", "performance / 2100 MHz", "0123456789ab", "2026-11-30T12:00:00",
                 "full", "5 measured + 1 warmup per cell", "rust 1.0", "python 1.0", "-O3 -march=native",
                 '<span class="badge real">real</span>', '<span class="badge synthetic">synthetic</span>'):
        assert text in page, text
    # the roofline of each size and thread count
    assert ">40.8</td>" in page and ">102.0</td>" in page  # 110M and 15M (in cache) at 4 threads
    # the quiet-machine guard: one busy run left out, and where
    measured = sum(len(c.runs) for c in suite.cells)
    assert f"1 of {measured} runs left out" in page and "c stories110M j=4: 1 of 6" in page


def test_the_page_holds_every_chart_and_table(suite, page):
    for title in ("decode speed (mean, 95% CI)", "time per inference", "share of the memory-bandwidth roofline",
                  "peak memory", "thread scaling", "ideal (linear in threads)"):
        assert page.count(title) >= 2, title  # one per model
    assert "Relative speed" in page and "geometric mean" in page and "vs c [95% CI]" in page
    assert NOT_RUN in page  # no validation file given
    # failed and skipped, with their reasons
    assert "run 3: exit -6 (SIGABRT)" in page and "not built: toolchain could not be installed" in page
    assert "Ports not built (skipped)" in page
    assert "llamacpp (peer)" in page and "own tool" in page


def test_hovering_a_bar_shows_its_raw_samples(suite, page):
    cell = next(c for c in suite.cells if c.port == "rust" and c.model.name == "stories110M" and c.threads == 2)
    samples = [r.tok_s for r in good_runs(cell)]
    digits = 1 if min(samples) >= 10 else 2
    assert ", ".join(f"{v:.{digits}f}" for v in samples) in page
    # time per inference: the wall times of the runs, in seconds
    assert ", ".join(f"{r.wall_s:.3f}" for r in good_runs(cell)) in page
    # the run on a busy machine is not among the samples
    busy = next(c for c in suite.cells if c.port == "c" and c.model.name == "stories110M" and c.threads == 4)
    good = [f"{r.tok_s:.1f}" for r in good_runs(busy)]
    assert len(good) == 5 and ", ".join(good) in page
    assert ", ".join(good + [f"{busy.runs[-1].tok_s:.1f}"]) not in page


def test_ports_are_grouped_by_language_and_role_and_sorted(suite):
    assert figures.group_of("Go", "port") == "managed" and figures.group_of("Java", "port") == "managed"
    assert figures.group_of("Python (PyTorch)", "port") == "python" and figures.group_of("Python", "reference") == "python"
    assert figures.group_of("C++ (llama.cpp)", "peer") == "peer" and figures.group_of("Haskell", "port") == "compiled"
    order = figures.ordered_ports(suite, "stories15M")
    assert order[:4] == ["cpp", "c", "rust", "zig"]  # compiled, fastest first
    assert order[4:6] == ["java", "go"] and order[6:9] == ["python", "pytorch", "tensorflow"]
    assert order[-1] == "llamacpp"


def test_validation_rows_are_shown_when_given(suite, tmp_path):
    rows = [{"port": "c", "case": "stories260K (real) v0", "max |diff|": "1.2e-06", "result": "ok"},
            {"port": "go", "case": "stories260K (real) v0", "max |diff|": "3.0e-02", "result": "FAIL: logits differ"}]
    (tmp_path / "v.json").write_text(json.dumps(rows))
    write_page(suite, tmp_path / "r.html", tmp_path / "v.json")
    text = (tmp_path / "r.html").read_text()
    assert "1 of 2 failed" in text and "FAIL: logits differ" in text and NOT_RUN not in text
    (tmp_path / "bad.json").write_text("{]")
    with pytest.raises(PolyllamaError, match="validation rows"):
        write_page(suite, tmp_path / "r.html", tmp_path / "bad.json")


def test_report_writes_the_page_beside_the_json_with_html(suite, tmp_path):
    json_path = tmp_path / "full-20261130-120000.json"
    resultfile.save(suite, json_path)
    assert app.report(str(json_path)) == 0
    assert not (tmp_path / "full-20261130-120000.html").exists()
    assert app.report(str(json_path), html=True) == 0
    page = tmp_path / "full-20261130-120000.html"
    assert page.exists() and page.stat().st_size > 1_000_000  # Plotly inline
    for suffix in ("-stories110M-toks.png", "-stories110M-toks.svg", "-scaling.png", "-scaling.svg"):
        assert (tmp_path / f"full-20261130-120000{suffix}").stat().st_size > 1000


# ---------------------------------------------------------------- the PNG and SVG figures
def test_every_port_has_its_own_colour_and_marker(suite):
    styles = figures.port_styles(suite)
    assert len(set(styles.values())) == len(styles) == len(PORTS)
    assert len({c for c, _ in styles.values()}) == len(styles)  # distinct colours, not only markers
    many = {f"p{i}": None for i in range(20)}
    fake = suite.model_copy(update={"ports": [PortInfo(name=p, language="C", role="port", toolchain=None,
                                                       build_flags="", build="built") for p in many], "cells": []})
    assert len({c for c, _ in figures.port_styles(fake).values()}) == 20


def test_figures_start_at_zero_with_integer_threads_and_legends_outside(suite):
    fig = figures.bars_figure(suite, "stories110M", "tok_s", "tokens per second")
    [ax] = fig.axes
    assert ax.get_ylim()[0] == 0
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the data, not over it
    assert any("95% confidence interval" in t.get_text() and "n = 5" in t.get_text() for t in fig.texts)
    footer = [t.get_text() for t in fig.texts if "commit 0123456789" in t.get_text()]
    assert footer and "256 steps" in footer[0] and "2026-11-30" in footer[0] and "Gold 6430" in footer[0]
    scaling = figures.scaling_figure(suite)
    for ax in scaling.axes:
        assert [float(x) for x in ax.get_xticks()] == [1.0, 2.0, 4.0] and ax.get_ylim()[0] == 0


def test_png_and_svg_are_written(suite, tmp_path):
    paths = figures.draw_all(suite, tmp_path, "s")
    assert {p.suffix for p in paths} == {".png", ".svg"} and len(paths) == 2 * (2 * len(MODELS) + 1)
    svg = (tmp_path / "s-stories15M-toks.svg").read_text()
    assert "95% confidence interval" in svg and "commit 0123456789" in svg and "llamacpp (peer)" in svg


# ---------------------------------------------------------------- in a real browser
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--no-proxy-server",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def chromium():
    found = next((shutil.which(n) for n in CHROMIUM if shutil.which(n)), None)
    if found is None:
        need("no Chromium to load the page in (Debian: apt-get install chromium; scripts/test-deps.sh)")
    return found


def _browse(chromium, tmp_path, page: Path, *flags) -> subprocess.CompletedProcess:
    """One headless Chromium on a file:// URL, with a fresh profile, no proxy and no name resolution."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run([chromium, *OFFLINE, f"--user-data-dir={profile}", *flags, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


def page_errors(chromium, tmp_path, page: Path) -> tuple[list[str], dict[str, str]]:
    """Every script error of a page, from two independent sources: what its error probe wrote into
    <html data-errors> (uncaught exceptions, rejected promises, resources that failed to load), and
    every console message Chromium logged to stderr (console.error included; Chromium 156 logs them
    all as INFO:CONSOLE, so matching ERROR:CONSOLE alone would miss them); with <html>'s attributes."""
    r = _browse(chromium, tmp_path, page, "--enable-logging=stderr", "--v=0", "--dump-dom")
    tag = re.search(r"<html([^>]*)>", r.stdout)
    assert tag, f"no DOM came back: {r.stderr[-2000:]}"
    attrs = {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag.group(1))}
    assert "data-errors" in attrs, "the page's error probe did not run"
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    attrs["console"] = console
    return json.loads(attrs["data-errors"]) + console, attrs


# a broken page, and which of the two sources must catch it: the probe in the DOM, the console log
BROKEN = {
    "throws": ("<script>undefinedFunction();</script>", ("probe", "console")),
    "throws-later": ("<script>setTimeout(function () { null.x; }, 300);</script>", ("probe", "console")),
    "rejects": ("<script>Promise.reject(new Error('nope'));</script>", ("probe", "console")),
    "console-error": ("<script>console.error('something broke');</script>", ("console",)),
    "fetches": ('<img src="https://cdn.example.com/plot.png">', ("probe",)),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_the_browser_check_catches_a_broken_page(chromium, tmp_path, kind):
    page = tmp_path / f"{kind}.html"
    body, sources = BROKEN[kind]
    page.write_text(f"<!DOCTYPE html><html><head><script>{ERROR_PROBE}</script></head>"
                    f"<body><p>text</p>{body}</body></html>")
    errors, attrs = page_errors(chromium, tmp_path, page)
    assert errors, f"a page that {kind} was passed as clean"
    if "probe" in sources:
        assert json.loads(attrs["data-errors"]), f"the probe missed a page that {kind}"
    if "console" in sources:
        assert attrs["console"], f"the console log missed a page that {kind}"
    clean = tmp_path / "clean.html"
    clean.write_text(f"<!DOCTYPE html><html><head><script>{ERROR_PROBE}</script></head><body><p>ok</p></body></html>")
    assert page_errors(chromium, tmp_path, clean)[0] == []


def _colours(png: Path) -> int:
    from PIL import Image
    with Image.open(png) as im:
        return len(im.convert("RGB").getcolors(maxcolors=1 << 24))


def test_the_page_draws_offline_without_a_script_error(chromium, suite, tmp_path):
    page = tmp_path / "report.html"
    write_page(suite, page)
    errors, attrs = page_errors(chromium, tmp_path, page)
    assert errors == []
    assert attrs.get("data-charts") == "10" and attrs.get("data-drawn") == "10", attrs  # every chart has its SVG
    # the screenshot, kept in build/ (a CI artefact), against a blank page's
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    _browse(chromium, tmp_path, page, f"--screenshot={SCREENSHOT}", "--window-size=1400,3000")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    _browse(chromium, tmp_path, blank, f"--screenshot={tmp_path / 'blank.png'}", "--window-size=1400,3000")
    assert SCREENSHOT.exists(), "Chromium took no screenshot"
    assert _colours(tmp_path / "blank.png") <= 2
    assert _colours(SCREENSHOT) > 200  # text, bars in several colours, lines, tables
    assert SCREENSHOT.stat().st_size > 10 * (tmp_path / "blank.png").stat().st_size


# ---------------------------------------------------------------- at the end of `invoke bench`
@pytest.fixture(scope="module")
def benched(tmp_path_factory, stories260k):
    """`invoke bench` against two fake ports (tests/fakeport.py): one good, one that crashes."""
    from test_bench import MATRIX, _fake_host, _fake_port

    from orchestrator.bench import pipeline
    tmp = tmp_path_factory.mktemp("bench")
    for behaviour in ("good", "crash"):
        _fake_port(tmp / "impls", behaviour, behaviour)
    (tmp / "m.toml").write_text(MATRIX)
    options = pipeline.Options(matrix="t", out=str(tmp / "r.json"), ports="good,crash")
    assert pipeline.main(options, matrices=tmp / "m.toml", impls=tmp / "impls", describe=_fake_host) == 0
    return tmp


def test_bench_writes_the_page_beside_the_json(benched):
    text = (benched / "r.html").read_text()
    assert "<h2>Machine and suite</h2>" in text and "stories260K" in text
    crashed = [c for c in resultfile.load(benched / "r.json").cells if c.port == "crash"]
    assert crashed and all(c.status == "failed" and html.escape(c.reason) in text for c in crashed)
    assert (benched / "r-stories260K-toks.svg").exists()


def test_the_page_of_a_bench_run_draws_without_errors(chromium, benched, tmp_path):
    errors, attrs = page_errors(chromium, tmp_path, benched / "r.html")
    assert errors == [] and attrs.get("data-drawn") == attrs.get("data-charts") != "0", (errors, attrs)


def test_a_suite_with_nothing_measured_still_gives_a_page(suite):
    failed = [c.model_copy(update={"status": "failed", "runs": [], "reason": "not built: no compiler"})
              for c in suite.cells]
    for cells in ([], failed):
        page = build_page(suite.model_copy(update={"cells": cells}))
        assert "<h2>Machine and suite</h2>" in page and "Failed and skipped" in page
    assert "not built: no compiler" in build_page(suite.model_copy(update={"cells": failed}))
