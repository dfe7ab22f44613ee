"""Summaries computed from raw samples (never stored), relative speed, and the noise test that
`invoke compare` uses."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from schemas.results import Cell


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float
    median: float
    min: float
    max: float

    def fmt(self, digits: int = 1) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def summarize(samples: list[float]) -> Summary | None:
    if not samples:
        return None
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return Summary(len(samples), statistics.fmean(samples), sd, statistics.median(samples),
                   min(samples), max(samples))


FEW_RUNS = 5
WIDE_CV = 0.10


def good_runs(cell: Cell):
    """The runs that count: passed every check and were taken on a quiet machine."""
    return [r for r in cell.runs if r.ok and not r.busy]


def busy_runs(cell: Cell) -> int:
    return sum(1 for r in cell.runs if r.ok and r.busy)


def metric(cell: Cell, name: str) -> Summary | None:
    """tok_s, wall_s, rss_mib, load_s, ttft_s or cpu_util over the runs that count."""
    runs = good_runs(cell)
    if name == "tok_s":
        values = [r.tok_s for r in runs if r.tok_s]
    elif name == "wall_s":
        values = [r.wall_s for r in runs]
    elif name == "rss_mib":
        values = [r.max_rss_kib / 1024 for r in runs]
    elif name in ("load_s", "ttft_s"):
        values = [getattr(r.stats, name) for r in runs if r.stats]
    elif name == "cpu_util":
        values = [(r.user_s + r.sys_s) / r.wall_s for r in runs if r.wall_s > 0]
    else:
        raise ValueError(name)
    return summarize(values)


def roofline_share(tok_s: float | None, weight_bytes: int, bandwidth_gbs: float | None) -> float | None:
    """Share of the memory-bandwidth limit: bytes read per second / measured read bandwidth."""
    if not tok_s or not bandwidth_gbs:
        return None
    return tok_s * weight_bytes / (bandwidth_gbs * 1e9)


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass(frozen=True)
class Welch:
    t: float
    df: float
    p: float  # two-sided


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's unequal-variance t test of mean(b) - mean(a), with Welch-Satterthwaite degrees of
    freedom; None when either side has fewer than two samples."""
    from scipy import stats as st  # lazy: scipy takes a third of a second to import, and only intervals need it

    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:
        return Welch(math.inf if diff else 0.0, len(a) + len(b) - 2, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Welch(t, df, float(2 * st.t.sf(abs(t), df)))


def ratio_ci(a: list[float], b: list[float], level: float = 0.95) -> Ratio | None:
    """mean(b) / mean(a) for independent samples, as the ratio of geometric means with a Welch
    interval on the log scale ("1.04x [0.98, 1.10]"); the interval is NaN when n < 2 on a side."""
    from scipy import stats as st  # lazy: scipy takes a third of a second to import, and only intervals need it

    la, lb = [math.log(x) for x in a if x > 0], [math.log(x) for x in b if x > 0]
    if not la or not lb:
        return None
    d = statistics.fmean(lb) - statistics.fmean(la)
    if len(la) < 2 or len(lb) < 2:
        return Ratio(math.exp(d), math.nan, math.nan, min(len(la), len(lb)), level)
    va, vb = statistics.variance(la) / len(la), statistics.variance(lb) / len(lb)
    if va + vb == 0:
        return Ratio(math.exp(d), math.exp(d), math.exp(d), min(len(la), len(lb)), level)
    df = (va + vb) ** 2 / (va ** 2 / (len(la) - 1) + vb ** 2 / (len(lb) - 1))
    half = st.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
    return Ratio(math.exp(d), math.exp(d - half), math.exp(d + half), min(len(la), len(lb)), level)


def noise_notes(s: Summary | None) -> list[str]:
    """What n and the spread allow: a note when there are few runs or they disagree widely."""
    if s is None:
        return []
    notes = [f"n={s.n}<{FEW_RUNS}"] if s.n < FEW_RUNS else []
    if s.n > 1 and s.mean and s.sd / s.mean > WIDE_CV:
        notes.append(f"cv={100 * s.sd / s.mean:.0f}%")
    return notes


@dataclass(frozen=True)
class Ratio:
    """a/b as a geometric mean of paired ratios, with a confidence interval and its n."""
    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def fmt(self) -> str:
        if math.isnan(self.low):
            return f"{self.value:.2f}x (n<2)"
        return f"{self.value:.2f}x [{self.low:.2f}, {self.high:.2f}]"

    def fmt_pct(self) -> str:
        return f"{100 * (self.value - 1):+.2f}% [{100 * (self.low - 1):+.2f}, {100 * (self.high - 1):+.2f}]"


def paired_ratio(a: list[float], b: list[float], level: float = 0.95) -> Ratio | None:
    """Ratio of paired samples a_i / b_i: the mean of the log ratios with a Student-t interval."""
    from scipy import stats as st  # lazy: scipy takes a third of a second to import, and only intervals need it

    logs = [math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0]
    if not logs:
        return None
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return Ratio(math.exp(m), math.nan, math.nan, 1, level)
    half = st.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Ratio(math.exp(m), math.exp(m - half), math.exp(m + half), len(logs), level)
