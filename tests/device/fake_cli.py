"""`python -m tests.device.fake_cli ...` runs `python -m device ...` with the stand-in embedder, so
subprocess tests (signals, two processes) do not need a converted model."""

import sys

from device import cli
from tests.device.fakes import FakeEmbedder

cli.embedder_factory = lambda path, num_threads: FakeEmbedder()
sys.exit(cli.main())
