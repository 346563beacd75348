"""Regenerate vla/_proto/v1 from protos/vla/v1 (same as `python -m vla.serving.protos_build`)."""

import sys

from vla.serving.protos_build import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
