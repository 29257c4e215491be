"""Show every benchmark's `extra_info` (images/s, FLOPs, speed-ups) at the end of a timed run, so
the figures are on screen and not only in `--benchmark-json` output, and a benchmark's `targets`
lines (a measured ratio against its goal) in a section of their own."""

from __future__ import annotations


def _format(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if getattr(b, "extra_info", None)]
    if not benchmarks:
        return
    terminalreporter.section("benchmark figures (extra_info)")
    for bench in benchmarks:
        fields = "  ".join(f"{k}={_format(v)}" for k, v in bench.extra_info.items()
                           if k != "targets")
        terminalreporter.write_line(f"{bench.name}: {fields}")
    targets = [(bench.name, line) for bench in benchmarks
               for line in bench.extra_info.get("targets", [])]
    if targets:
        terminalreporter.section("speed targets (this run, against its own baselines; "
                                 "docs/benchmarks.md)")
        for name, line in targets:
            terminalreporter.write_line(f"{line}    [{name}]")
