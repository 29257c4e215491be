"""What a run prints: one flushed line at a time, and nothing on torchrun ranks other than 0."""

from __future__ import annotations

from pathlib import Path

from harness.contract import pick
from harness.run.results_folder import read_rows
from harness.run.results_folder import cell_dir

_quiet = False


def say(text: str) -> None:
    if not _quiet:
        print(text, flush=True)


def quiet() -> None:
    """Silence this process (a non-zero torchrun rank: only rank 0 talks)."""
    global _quiet
    _quiet = True


def is_quiet() -> bool:
    return _quiet


def result_line(root: Path, name: str) -> str:
    rows = read_rows(cell_dir(root, name))
    best = pick(rows, "test_bits_per_dim", weights="raw") or pick(rows, "test_bits_per_dim")
    if best is None:
        return ""
    weights = f" ({best['weights']})" if best.get("weights") else ""
    return f", test {best['value']:.3f} bits/dim{weights}"


def outcome(root: Path, name: str, status: dict) -> str:
    """What follows a finished cell's status in its line: the error, or its test figure."""
    if status.get("status") == "failed":
        return f": {status.get('error')}"
    return result_line(root, name)
