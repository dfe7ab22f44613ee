"""Saving and loading suites. Every save is atomic, and the Writer saves after every change, so
an interrupted suite keeps every finished run."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import ValidationError

from schemas.results import FORMAT_VERSION, Cell, Suite, ValidationRow

READABLE = (1, 2, 3, 4, FORMAT_VERSION)

from ..errors import PolyllamaError, first_error
from ..files import write_atomic


def save(suite: Suite, path: Path) -> None:
    write_atomic(path, suite.model_dump_json(indent=1))


def load(path) -> Suite:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolyllamaError(f"{path}: no such result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolyllamaError(f"{path}: not a JSON result file: {e}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE:
        raise PolyllamaError(f"{path}: result format version {version!r}, this polyllama reads "
                             f"{', '.join(map(str, READABLE))}")
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        raise PolyllamaError(f"{path}: {first_error(e)}") from None


class Writer:
    """The suite being measured: cells keyed by Cell.key (port, model, weight type, threads), saved
    on every put."""

    def __init__(self, suite: Suite, path: Path):
        self.path = path
        self._suite = suite
        self._cells = {self._key(c): c for c in suite.cells}
        save(suite, path)

    @staticmethod
    def _key(cell: Cell) -> tuple:
        return cell.key

    def get(self, key: tuple) -> Cell:
        return self._cells[key]

    def put(self, cell: Cell) -> None:
        self._cells[self._key(cell)] = cell
        self._suite = self._suite.model_copy(update={"cells": list(self._cells.values())})
        save(self._suite, self.path)

    def validated(self, rows: list[ValidationRow]) -> None:
        """The validation run before measuring, saved at once like every run."""
        self._suite = self._suite.model_copy(update={"validation": list(rows)})
        save(self._suite, self.path)

    def finish(self) -> Suite:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._suite = self._suite.model_copy(update={"finished": now})
        save(self._suite, self.path)
        return self._suite
