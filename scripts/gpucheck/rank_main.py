"""One rank of the `distributed` section: `torchrun ... -m gpucheck.rank_main OUT DEVICE_TYPE`
(scripts/ on PYTHONPATH); see gpucheck.group."""

from __future__ import annotations

import sys
from pathlib import Path

from gpucheck.group import run_rank

if __name__ == "__main__":
    run_rank(Path(sys.argv[1]), sys.argv[2])
