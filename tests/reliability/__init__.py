"""Reliability suite: faults injected, inputs fuzzed. Figures in README "Reliability"."""
