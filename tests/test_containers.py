"""Container runs through the Docker SDK against a real engine (Docker, or podman's API set up by
scripts/podman-setup.sh, started by the container_engine fixture): build the reduced image, run the Python and C ports inside it, and
check that they print what the native builds print."""

import numpy as np
import pytest
from conftest import need

from orchestrator.process import execute
from orchestrator.errors import PolyllamaError
from orchestrator.ports.discover import discover, tool_env

TARGET = "slim"
IN_IMAGE = ("python", "c")


@pytest.fixture(scope="module")
def runner(container_engine):
    from orchestrator.containers.engine import ContainerRunner, _client, build_image
    try:
        _client()
    except PolyllamaError as e:
        need(f"no container engine: {e}")
    return ContainerRunner.connect(build_image(TARGET, log=lambda m: None))


def test_missing_engine_is_one_clear_error(monkeypatch):
    from orchestrator.containers.engine import ContainerRunner
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(PolyllamaError, match="no container engine reachable") as info:
        ContainerRunner.connect()
    assert "\n" not in str(info.value)


def test_image_holds_the_reduced_set_of_ports(runner):
    assert set(IN_IMAGE) <= set(runner.built_ports())


@pytest.mark.parametrize("name", IN_IMAGE)
def test_container_run_matches_native(runner, stories260k, name, tmp_path):
    port = {p.name: p for p in discover()}[name]
    if not port.outputs_present():
        need(f"port {name} is not built natively")
    args = [str(stories260k.path), "-z", str(stories260k.tokenizer), "-t", "0", "-n", "80", "-i", "Once upon"]
    native = execute(port.run_argv() + args, cwd=port.dir, env=tool_env(), timeout=120)
    boxed = runner.execute(port.run_argv() + args, cwd=port.dir, timeout=120, threads=1)
    assert native.returncode == 0 and boxed.returncode == 0, boxed.stderr
    assert boxed.stdout == native.stdout
    assert boxed.stats and boxed.stats["port"] == name and boxed.max_rss_kib > 0

    out_native, out_boxed = tmp_path / "n.f32", tmp_path / "b.f32"
    ids = "1,403,411,9,18,300"
    execute(port.run_argv() + args[:3] + ["-m", "logits", "-k", ids, "-o", str(out_native)], cwd=port.dir,
            env=tool_env(), timeout=120)
    r = runner.execute(port.run_argv() + args[:3] + ["-m", "logits", "-k", ids, "-o", str(out_boxed)],
                       cwd=port.dir, timeout=120, threads=1)
    assert r.returncode == 0, r.stderr
    a, b = np.fromfile(out_native, dtype="<f4"), np.fromfile(out_boxed, dtype="<f4")
    assert a.size == b.size == 6 * 512
    assert np.abs(a - b).max() <= 1e-4 * (1 + np.abs(a).max())


def test_bench_cell_in_a_container(runner, stories260k, tmp_path):
    from orchestrator.bench import pipeline as bench
    from orchestrator.containers.engine import ContainerRunner
    from orchestrator.results import resultfile
    code = bench.main(bench.Options(matrix="quick", ports="python", models="stories260K", threads="1", runs="1",
                                    warmup="0", steps="16", out=str(tmp_path / "r.json"), docker=True,
                                    image=runner.image, strict=True), connect=ContainerRunner.connect)
    suite = resultfile.load(tmp_path / "r.json")
    assert code == 0, [c.reason for c in suite.cells]
    assert suite.host.container_image == runner.image_id
    [cell] = suite.cells
    assert cell.status == "ok" and cell.runs[0].stats.generated_tokens == 16


def test_the_exit_status_is_polled_not_waited_for():
    """podman's compat `wait` busy-polls in its service (a core for as long as the port runs):
    the runner asks for the state instead, and gives up at its timeout."""
    from orchestrator.containers.engine import _wait

    class Fake:
        short_id = "abc"

        def __init__(self, polls_until_exit):
            self.left, self.status, self.attrs, self.reloads = polls_until_exit, "running", {}, 0

        def reload(self):
            self.reloads += 1
            self.left -= 1
            if self.left <= 0:
                self.status, self.attrs = "exited", {"State": {"ExitCode": 3}}

        def wait(self, **kw):
            raise AssertionError("the engine's wait call must not be used")

    done = Fake(3)
    assert _wait(done, timeout=5) == {"StatusCode": 3} and done.reloads == 3
    with pytest.raises(TimeoutError, match="still running"):
        _wait(Fake(10**9), timeout=0.1)
