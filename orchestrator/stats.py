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


def good_runs(cell: Cell):
    return [r for r in cell.runs if r.ok]


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


def welch_t(a: list[float], b: list[float]) -> float | None:
    """Welch's t statistic; None when either side has fewer than two samples."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return math.inf if statistics.fmean(a) != statistics.fmean(b) else 0.0
    return (statistics.fmean(b) - statistics.fmean(a)) / math.sqrt(va + vb)


def significant(a: list[float], b: list[float], threshold: float = 2.5) -> bool:
    """Beyond the noise: |Welch t| above a conservative threshold (about p < 0.05 for small n)."""
    t = welch_t(a, b)
    return t is not None and abs(t) > threshold


@dataclass(frozen=True)
class Ratio:
    """a/b as a geometric mean of paired ratios, with a confidence interval and its n."""
    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def fmt_pct(self) -> str:
        return f"{100 * (self.value - 1):+.2f}% [{100 * (self.low - 1):+.2f}, {100 * (self.high - 1):+.2f}]"


def paired_ratio(a: list[float], b: list[float], level: float = 0.95) -> Ratio | None:
    """Ratio of paired samples a_i / b_i: the mean of the log ratios with a Student-t interval."""
    from scipy import stats as st

    logs = [math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0]
    if not logs:
        return None
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return Ratio(math.exp(m), math.nan, math.nan, 1, level)
    half = st.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Ratio(math.exp(m), math.exp(m - half), math.exp(m + half), len(logs), level)
