"""Reading JSONL with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """Bad input data: the message names the file (and line) at fault."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """All records of a JSONL file; each must be an object holding the ``required`` keys."""
    return [row for _, row in read_jsonl_lines(path, required)]


def read_jsonl_lines(path: str | Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """``read_jsonl`` with each record's line number, for errors found later."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}, line {number}: missing field(s) {missing}")
            rows.append((number, row))
    return rows
