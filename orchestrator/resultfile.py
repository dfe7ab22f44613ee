"""Saving and loading suites: atomic writes, so an interrupted suite keeps every finished cell."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from schemas.results import FORMAT_VERSION, Suite

from .errors import PolyllamaError


def save(suite: Suite, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(suite.model_dump_json(indent=1))
    os.replace(tmp, path)


def load(path) -> Suite:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolyllamaError(f"{path}: no such result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolyllamaError(f"{path}: not a JSON result file: {e}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise PolyllamaError(f"{path}: result format version {version!r}, this polyllama reads {FORMAT_VERSION}")
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise PolyllamaError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
