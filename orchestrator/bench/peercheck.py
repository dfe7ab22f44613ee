"""A peer engine measured by its own tool beside its row: if `invoke bench` made the engine
slower than its users see it (a binding, a thread setting), the two disagree and the row says so.
The tool and how to read its output come from the peer's manifest (`[peer_check]`)."""
from __future__ import annotations

import json
import subprocess

from schemas.results import Cell, PeerCheck

from ..ports.discover import Port, tool_env
from ..results.stats import metric


def _field(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def has_check(port: Port, cell: Cell) -> bool:
    """Whether the peer's manifest names its own tool for this cell's kind of test."""
    spec = port.manifest.peer_check
    return spec is not None and (spec.prompt_command if cell.prefill else spec.command) is not None


def run_check(port: Port, cell: Cell, timeout: float) -> PeerCheck:
    spec = port.manifest.peer_check
    subs = {"{model}": cell.model.path, "{threads}": str(cell.threads), "{steps}": str(cell.steps)}
    command = spec.prompt_command if cell.prefill else spec.command
    argv = [next((v for k, v in subs.items() if a == k), a) for a in port.expand(command)]
    tok = metric(cell, "tok_s")
    base = dict(command=argv, row_tok_s=tok.mean if tok else None, tolerance=spec.tolerance)
    try:
        r = subprocess.run(argv, cwd=port.dir, env=tool_env(), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return PeerCheck(**base, tool_tok_s=None, problem=f"could not run: {e}"[:200])
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return PeerCheck(**base, tool_tok_s=None, problem=f"exit {r.returncode}: {last}"[:200])
    try:
        value = float(_field(json.loads(r.stdout), spec.tok_s))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return PeerCheck(**base, tool_tok_s=None, problem=f"no {spec.tok_s} in its output: {e}"[:200])
    return PeerCheck(**base, tool_tok_s=value)
