#!/usr/bin/env python3
"""Compare the non-timing metric rows of two results folders, e.g. the same experiment run by
two trees of this repository:

    python scripts/compare_rows.py BEFORE_RESULTS AFTER_RESULTS [--rtol 1e-6]

Prints how many rows were compared and every difference; exits 1 when any row differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.report.rows_diff import diff_rows, folder_rows, keyed, max_relative_difference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args()
    before, after = folder_rows(args.before), folder_rows(args.after)
    differences = diff_rows(before, after, args.rtol, args.atol)
    for line in differences:
        print(line)
    print(f"{len(keyed(before))} non-timing rows before, {len(keyed(after))} after; "
          f"{len(differences)} difference(s); largest relative difference "
          f"{max_relative_difference(before, after):.3g}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
