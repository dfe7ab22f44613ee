"""The roofline probe (orchestrator/bench/probe/bandwidth.c): it builds, reads with the widest
vector kernel the CPU has, says how it read, and refuses bad arguments with one line. Its speed
is a benchmark's business, never a test's."""
import platform
import subprocess

import pytest

from orchestrator.bench import host


@pytest.fixture(scope="module")
def probe():
    exe = host.probe_binary()
    assert exe is not None, "the probe needs a C compiler (cc), which ./run installs"
    return exe


def test_the_probe_reports_rate_and_method(probe):
    r = subprocess.run([str(probe), str(3 << 20), "2", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    reading = host._parse(r.stdout)
    assert reading is not None and reading.gbs > 0 and reading.streams in (1, 2, 4, 8)
    kernel, streams, pages = reading.method.split(",")
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    expected = ("avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else "portable") \
        if platform.machine() in ("x86_64", "AMD64") else "neon" if platform.machine() in ("aarch64", "arm64") else "portable"
    assert kernel == expected and streams == f"{reading.streams}-streams"
    assert pages in ("huge-pages", "huge-pages-refused", "4k-pages")


def test_one_stream_count_can_be_asked_for(probe):
    r = subprocess.run([str(probe), str(1 << 20), "1", "2", "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and host._parse(r.stdout).streams == 4


def test_small_pages_when_huge_pages_are_turned_off(probe):
    env = {"POLYLLAMA_HUGEPAGES": "0", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(probe), str(4 << 20), "1", "2"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and host._parse(r.stdout).method.endswith("4k-pages")


@pytest.mark.parametrize("argv", [[], ["100", "1", "1"], ["1048576", "0", "1"], ["1048576", "1", "0"],
                                  ["1048576", "1", "1", "3"], ["1048576", "1", "1", "9"]])
def test_bad_arguments_get_one_line_and_exit_2(probe, argv):
    r = subprocess.run([str(probe), *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_a_line_that_is_not_the_probes_is_not_a_reading():
    assert host._parse("1 12.5") is None and host._parse("1 x avx512,4-streams,huge-pages") is None
    assert host._parse("2 30.5 avx2,8-streams,4k-pages") == host.Reading(30.5, 8, "avx2,8-streams,4k-pages")


# ---------------------------------------------------------------- the compute peak (peak.c)
def test_the_peak_probe_uses_the_widest_instruction_and_its_rates_are_ordered():
    """f32 FMA and int8 dot products, with the instruction the CPU has. An int8 dot product does
    at least twice the operations of an f32 FMA on a vector of the same width, so a probe whose
    int8 rate is not above its f32 rate has picked a slower path than the CPU offers."""
    peaks = host.measure_peaks([1])
    assert [p.kind for p in peaks] == ["f32", "int8"] and all(p.gops > 0 for p in peaks)
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    if platform.machine() in ("x86_64", "AMD64"):
        f32 = "avx512-fma" if " avx512f" in flags else "avx2-fma" if " fma" in flags else "portable"
        int8 = ("avx512-vnni" if " avx512_vnni" in flags else "avx-vnni" if " avx_vnni" in flags
                else "avx2-maddubs" if " avx2" in flags else "portable")
        assert [p.method.split(",")[0] for p in peaks] == [f32, int8]
    if peaks[1].method.split(",")[0] != "portable":
        assert peaks[1].gops > peaks[0].gops


def test_the_peak_probe_refuses_bad_arguments_with_one_line():
    exe = host.probe_binary(host.PEAK_SRC, host.PEAK_BIN)
    for argv in (["f64", "1", "1"], ["f32", "0", "1"], ["int8", "1"], ["f32", "1", "x"]):
        r = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, argv
