"""Progress of evaluation phases on stderr: a tqdm bar on a terminal, otherwise a plain line
at the start, about every `every_s` seconds with the count and an ETA, and at the end; each line
names the cell (`label`) and the phase, so a long evaluation is never a silent minute."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PhaseProgress:
    """`with PhaseProgress("cell_a", "likelihood pass (raw)", total=10_000, unit="images") as p:
    p.update(32)`. `enabled=False` (non-zero ranks, tests) prints nothing."""

    def __init__(self, label: str, phase: str, total: int | None = None, unit: str = "images",
                 enabled: bool = True, every_s: float = 15.0, mode: str = "auto"):
        self.prefix = f"{label}: " if label else ""
        self.phase, self.total, self.unit, self.every_s = phase, total, unit, every_s
        self.enabled = enabled
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.done = 0
        self.bar = None
        self.start = self.last = 0.0

    def __enter__(self) -> "PhaseProgress":
        self.start = self.last = time.perf_counter()
        if not self.enabled:
            return self
        if self.mode == "bar" and self.total:
            self.bar = tqdm(total=self.total, unit=self.unit[:-1] if self.unit.endswith("s")
                            else self.unit, desc=f"{self.prefix}{self.phase}",
                            dynamic_ncols=True, file=sys.stderr, leave=False)
        else:
            size = f" ({self.total:,} {self.unit})" if self.total else ""
            print(f"{self.prefix}{self.phase}{size} ...", file=sys.stderr, flush=True)
        return self

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        if self.total:
            eta = elapsed / max(self.done, 1) * (self.total - self.done)
            print(f"{self.prefix}{self.phase}: {self.done:,}/{self.total:,} {self.unit} "
                  f"({100 * self.done / self.total:.0f}%), {_fmt_s(elapsed)} elapsed, "
                  f"ETA {_fmt_s(eta)}", file=sys.stderr, flush=True)
        else:
            print(f"{self.prefix}{self.phase}: {self.done:,} {self.unit}, {_fmt_s(elapsed)} "
                  "elapsed", file=sys.stderr, flush=True)

    def __exit__(self, kind, value, traceback) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled and kind is None:
            print(f"{self.prefix}{self.phase}: done in {_fmt_s(time.perf_counter() - self.start)}",
                  file=sys.stderr, flush=True)
