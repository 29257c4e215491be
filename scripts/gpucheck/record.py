"""What one section leaves behind, and when it counts as ok.

A section (a child process of scripts/gpu_check.py) writes `sections/<name>.json` through a
`Record` after every figure and check, so a section stopped past its budget keeps what it had
measured. The parent then gives the verdict (`verdict`): ok only when the child exited 0, wrote
its record, and every check in it held; skipped (never ok) when the section said it has no
meaning here; otherwise failed or timed out.

Global torch settings (TF32, cuDNN flags, matmul precision, threads, grad mode, default dtype)
are snapshotted around the section: one it changed and left changed fails the
`global_settings_restored` check. `restored()` snapshots and restores around a step that changes
them on purpose (the trainer sets TF32 and never resets it).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import atomic

STATUSES = ("ok", "failed", "timed_out", "skipped")


class Skip(Exception):
    """Raised by a section that has no meaning on this machine (e.g. TF32 on a CPU)."""


class Record:
    """One section's figures, checks and notes, saved atomically after each addition."""

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.data: dict[str, Any] = {"section": name, "status": "running", "checks": {},
                                     "figures": {}, "notes": [], "error": None}
        self.save()

    def save(self) -> None:
        atomic.write_json(self.path, self.data)

    def figure(self, name: str, value: float | None, unit: str, compared: str,
               **extra: Any) -> float | None:
        """A measured figure with its unit and what it measured or compared; a non-finite value
        is kept as None and fails a check of the same name."""
        finite = value is not None and math.isfinite(float(value))
        self.data["figures"][name] = {"value": float(value) if finite else None, "unit": unit,
                                      "compared": compared, **extra}
        if value is not None and not finite:
            self.check(f"{name}_finite", False, f"{name} came out {value}")
        self.save()
        return float(value) if finite else None

    def check(self, name: str, held: bool, detail: str) -> bool:
        self.data["checks"][name] = {"held": bool(held), "detail": detail}
        self.save()
        return bool(held)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def finish(self, status: str, error: str | None = None, reason: str | None = None) -> None:
        self.data["status"] = status
        self.data["error"] = error
        if reason is not None:
            self.data["reason"] = reason
        self.save()

    @property
    def checks_held(self) -> bool:
        return all(c["held"] for c in self.data["checks"].values())


# --------------------------------------------------------------------------- global settings


def settings() -> dict[str, Any]:
    """The process-wide torch settings a section might change, by name."""
    import torch

    found: dict[str, Any] = {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cuda.matmul.allow_bf16_reduced_precision_reduction":
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "num_threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad_enabled": torch.is_grad_enabled(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    for device_type in ("cpu", "cuda"):
        found[f"autocast.{device_type}"] = torch.is_autocast_enabled(device_type)
    return found


def apply_settings(values: dict[str, Any]) -> None:
    """Put back the settings of a `settings()` snapshot."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = values["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = values["cudnn.allow_tf32"]
    torch.backends.cudnn.benchmark = values["cudnn.benchmark"]
    torch.backends.cudnn.deterministic = values["cudnn.deterministic"]
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = \
        values["cuda.matmul.allow_bf16_reduced_precision_reduction"]
    torch.set_float32_matmul_precision(values["float32_matmul_precision"])
    torch.use_deterministic_algorithms(values["deterministic_algorithms"])
    torch.set_num_threads(values["num_threads"])
    torch.set_default_dtype(getattr(torch, values["default_dtype"].removeprefix("torch.")))
    torch.set_grad_enabled(values["grad_enabled"])
    if values["CUDA_VISIBLE_DEVICES"] is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = values["CUDA_VISIBLE_DEVICES"]


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{key}: {before[key]!r} -> {after.get(key)!r}" for key in before
            if after.get(key) != before[key]]


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Run a block that changes global settings on purpose, then put them back."""
    before = settings()
    try:
        yield
    finally:
        apply_settings(before)


# --------------------------------------------------------------------------- the verdict


def verdict(record: dict | None, returncode: int | None, timed_out: bool, wall_s: float,
            budget_s: float) -> dict[str, Any]:
    """The parent's view of one section: its record plus status, ok and why.

    ok only when the child exited 0, wrote a finished record and every check held; a skip is
    never ok; a record that claims ok beside a non-zero exit is failed."""
    result: dict[str, Any] = dict(record or {})
    result.update(returncode=returncode, wall_s=round(wall_s, 2), budget_s=round(budget_s, 1))
    checks = result.get("checks") or {}
    failed_checks = [f"{name}: {c.get('detail')}" for name, c in checks.items()
                     if not c.get("held")]
    claimed = result.get("status")
    if timed_out:
        status = "timed_out"
        reason = (f"stopped after its budget of {budget_s:.0f} s; figures measured before "
                  "then are kept")
    elif record is None:
        status, reason = "failed", f"exited {returncode} without writing its record"
    elif claimed == "skipped" and returncode == 0:
        status, reason = "skipped", result.get("reason") or "skipped"
    elif returncode != 0:
        status = "failed"
        reason = (result.get("error") or "; ".join(failed_checks)
                  or f"exited {returncode}")
    elif claimed != "ok":
        status = "failed"
        reason = result.get("error") or f"ended {claimed!r}, not ok"
    elif failed_checks:
        status, reason = "failed", "; ".join(failed_checks)
    else:
        status, reason = "ok", None
    if failed_checks and status != "failed":
        result["failed_checks"] = failed_checks
    result.update(status=status, ok=status == "ok", reason=reason)
    return result
