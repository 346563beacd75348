"""Kernel benchmark entry point (logic in kernels/bench.py; also `vla bench kernels`)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a bare checkout too
from kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
