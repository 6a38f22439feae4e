"""`python -m device ...`: see device/cli.py."""

import os
import sys

# One BLAS thread: the matcher's matrix-vector product is memory-bound, and a multi-threaded
# OpenBLAS competing with the interpreter's threads on a 2- or 4-core board is 10-100x slower
# (measured: 10,000 x 128 views, 0.23 ms with one thread, 14 ms with the default). Set before
# numpy is imported; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from .cli import main  # noqa: E402

sys.exit(main())
