"""`python -m benchmark`: the same as the `cxr-audit` console script."""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
