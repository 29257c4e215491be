"""Reliability suite (issue 12): faults injected, inputs fuzzed. Figures in README "Reliability"."""
