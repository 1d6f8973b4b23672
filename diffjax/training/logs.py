"""A run's `log.jsonl`: one JSON object per line, appended whole and read back tolerantly.

Each row is appended with one `write` to a file opened for appending, then flushed to disk, so a
crash leaves at most a torn last line; `read_log` drops such a line (a run killed mid-write) with a
warning, and refuses a damaged line anywhere else with the file and line number. `rewrite_log`
(used when a run resumes and forgets the rows after its checkpoint) replaces the file atomically.
"""

import json
import logging
import os


def read_log(path: str, upto: int | None = None) -> list[dict]:
    """The rows of the log at `path` (none if it does not exist), without those after step `upto`.

    Args:
      path: a `log.jsonl`.
      upto: drop rows whose "step" exceeds it (a resumed run rewrites what came later); None keeps all.

    Returns:
      The rows as dicts, in order. A last line that is cut short (no newline, or not JSON) is dropped
      with a warning.

    Raises:
      ValueError: naming the file and line, for a line before the last that is not a JSON object with
        a "step".
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    torn = lines.pop()  # the text after the last newline: empty unless the last write was cut short
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_row(path, number, line))
    if torn.strip():
        try:
            rows.append(_row(path, len(lines) + 1, torn))
        except ValueError:
            logging.warning("%s: its last line was cut short (a run stopped while writing it); dropped", path)
    return [r for r in rows if upto is None or r["step"] <= upto]


def _row(path, number, line):
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {number}, is not JSON ({error}): {line[:80]!r}") from None
    if not isinstance(row, dict) or "step" not in row:
        raise ValueError(f"{path}, line {number}, must be a JSON object with a 'step', got {line[:80]!r}")
    return row


def append_log(path: str, row: dict) -> None:
    """Append `row` to the log at `path` as one line, in one write, flushed to disk.

    Args:
      path: a `log.jsonl` (created if absent).
      row: a JSON-able dict with a "step".
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_log(path: str, rows: list[dict]) -> None:
    """Replace the log at `path` by `rows`, atomically (a temporary file renamed over it).

    Args:
      path: a `log.jsonl`.
      rows: the rows to keep, in order.
    """
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
