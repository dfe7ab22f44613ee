"""The progress line's estimate of the time left: every remaining run weighted by its expected cost
(bytes read per token x steps / threads), seconds per unit of cost learnt from the finished runs."""
import io
import random

import pytest

from orchestrator.bench.progress import Planned, Progress, run_cost

# a paper-like schedule, block by block (model, threads) as bench.pipeline runs it, the ports
# interleaved inside a block; a 110M-shape run costs 10x a 15M-shape run
MB = 10**6
SHAPES = [("15M", 60 * MB), ("110M", 600 * MB)]
PORTS = {"c": 1.0, "cpp": 1.0, "rust": 1.05, "zig": 1.05, "mojo": 0.95, "go": 1.8, "java": 1.4, "python": 1.1,
         "pytorch": 1.2, "tensorflow": 1.7, "llamacpp": 1.1}
THREADS = [1, 2]
RUNS = 4  # warmup + measured
STEPS = 256
SECONDS_PER_BYTE = 1 / 10e9  # a 10 GB/s machine


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _schedule(seed=3):
    """(key, planned cell, true seconds) for every run, in the order they run: a startup cost per
    process, threads that scale at 80% (not the cost model's 100%), 3% noise."""
    rng = random.Random(seed)
    order, planned = [], []
    for shape, size in SHAPES:
        for t in THREADS:
            cells = [Planned((p, shape, t), RUNS, run_cost(size, STEPS, t), t) for p in PORTS]
            planned += cells
            for _ in range(RUNS):
                for cell in cells:
                    speed = PORTS[cell.key[0]]
                    seconds = 0.05 + size * STEPS * SECONDS_PER_BYTE * speed / (1 + 0.8 * (t - 1))
                    order.append((cell.key, seconds * rng.gauss(1, 0.03)))
    return planned, order


def test_cost_of_a_run():
    assert run_cost(600 * MB, 256, 1) == 10 * run_cost(60 * MB, 256, 1)
    assert run_cost(60 * MB, 256, 2) == run_cost(60 * MB, 256, 1) / 2


def test_after_a_tenth_of_the_runs_the_estimate_is_within_a_quarter_of_the_truth():
    planned, order = _schedule()
    clock = Clock()
    progress = Progress(planned, stream=io.StringIO(), clock=clock)
    tenth = len(order) // 10
    for key, seconds in order[:tenth]:
        progress.step(f"{key}", key)
        clock.now += seconds
    # the tenth run has just finished; the next one starts now
    key, _ = order[tenth]
    progress.step(f"{key}", key)
    truth = sum(s for _, s in order[tenth:])
    eta = progress.eta_seconds()
    assert eta == pytest.approx(truth, rel=0.25), (eta, truth)
    # an average of the run times so far would be far off: the first tenth are all 15M-shape runs
    average = clock.now / tenth * (len(order) - tenth)
    assert abs(average / truth - 1) > 0.5
    # and the estimate keeps converging
    half = len(order) // 2
    for i in range(tenth, half):
        clock.now += order[i][1]
        progress.step(f"{order[i + 1][0]}", order[i + 1][0])
    truth = sum(s for _, s in order[half:])
    assert progress.eta_seconds() == pytest.approx(truth, rel=0.25)


def test_before_the_first_run_ends_the_prior_or_a_question_mark():
    planned, _ = _schedule()
    out = io.StringIO()
    progress = Progress(planned, stream=out, clock=Clock())
    progress.step("first", planned[0].key)
    assert progress.eta_seconds() is None and "ETA ?" in out.getvalue()
    with_prior = Progress(planned, stream=io.StringIO(), clock=Clock(), prior_s_per_cost=SECONDS_PER_BYTE)
    assert with_prior.eta_seconds() == pytest.approx(sum(p.cost * p.runs for p in planned) * SECONDS_PER_BYTE)


def test_skipped_runs_leave_the_estimate():
    cells = [Planned(("a",), 2, 1.0), Planned(("b",), 2, 10.0)]
    clock = Clock()
    progress = Progress(cells, stream=io.StringIO(), clock=clock)
    progress.step("a 1", ("a",))
    clock.now += 2.0
    progress.step("a 2", ("a",))  # 2 s per unit of cost
    assert progress.eta_seconds() == pytest.approx(2.0 + 2 * 10 * 2.0)
    progress.skip(("b",))
    progress.skip(("b",))
    assert progress.eta_seconds() == pytest.approx(2.0)
    assert progress.total == 2


def test_a_plain_count_still_works():
    out = io.StringIO()
    clock = Clock()
    progress = Progress(4, stream=out, clock=clock)
    for i in range(3):
        progress.step(f"run {i}")
        clock.now += 5.0
    progress.step("run 3")
    assert progress.eta_seconds() == pytest.approx(5.0)
    progress.done()
    assert "4/4" in out.getvalue()
