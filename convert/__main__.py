"""`python -m convert ...`: see convert/cli.py."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from .cli import main

sys.exit(main())
