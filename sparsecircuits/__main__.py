"""`python -m sparsecircuits`: the command line, also what `torchrun ... -m sparsecircuits` runs."""

import sys

from sparsecircuits.cli import main

if __name__ == "__main__":
    sys.exit(main())
