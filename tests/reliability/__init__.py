"""Reliability suite: faults injected, inputs fuzzed. Figures in docs/reliability.md."""
