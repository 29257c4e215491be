"""Progress of the runner's own long phases (the plan's FLOP and memory counts, its probe), so
no phase is a silent minute: a tqdm bar on stderr when that is a terminal, otherwise one plain
line per finished item on stdout, with the plan it precedes (stderr stays for the one-line
errors), giving the time so far and an ETA from the share of the work done."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm import tqdm

from harness.run import console


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds / 86400:.1f} days"


class PhaseProgress:
    """`count` items of work weighing `total` together (any unit: FLOPs, items): `start` says
    what the phase does, `advance(label, weight)` after each item, `close` at the end."""

    def __init__(self, title: str, count: int, total: float | None = None, verb: str = "done",
                 stream: TextIO | None = None, bar: bool | None = None):
        self.title, self.count, self.verb = title, count, verb
        self.total = float(count if total is None else total)
        self.shown = not console.is_quiet() and count > 0
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.stream = stream if stream is not None else sys.stderr if use_bar else sys.stdout
        self.bar = tqdm(total=count, desc=title, unit="item", file=self.stream,
                        dynamic_ncols=True) if self.shown and use_bar else None
        self.items, self.done = 0, 0.0
        self.started = time.perf_counter()

    def start(self, what: str) -> None:
        """The phase's first line: what it does, before the first item ends."""
        if self.bar is not None:
            self.bar.write(f"{self.title}: {what}", file=self.stream)
        elif self.shown:
            print(f"{self.title}: {what}", file=self.stream, flush=True)

    def eta_s(self) -> float | None:
        """Seconds left, from the time per unit of work so far; None before any work is done."""
        if self.done <= 0:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed * max(0.0, self.total - self.done) / self.done

    def advance(self, label: str, weight: float = 1.0) -> None:
        self.items += 1
        self.done += weight
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
        elif self.shown:
            elapsed = time.perf_counter() - self.started
            left = (f"; ETA {fmt_duration(self.eta_s())}" if self.items < self.count
                    else "; done")
            print(f"{self.title}: {self.items}/{self.count} {self.verb} ({label}), "
                  f"{fmt_duration(elapsed)} so far{left}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
