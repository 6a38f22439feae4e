"""`python -m tests.device.fake_cli ...` runs `python -m device ...` with the stand-in embedder, so
subprocess tests (signals, two processes) do not need a converted model.

With PRODREC_TEST_HOLD_AT=N in the environment, the frame source stops delivering at frame N until
the process gets SIGTERM or SIGINT (then the loop sees its stop request): a test can signal `run`
at a known point instead of racing the scene."""

import os
import signal
import sys
import threading

from device import cli
from tests.device.fakes import FakeEmbedder

cli.embedder_factory = lambda path, num_threads: FakeEmbedder()

HOLD_AT = int(os.environ.get("PRODREC_TEST_HOLD_AT", "0"))


class HeldSource:
    """Delivers frames up to HOLD_AT, then waits for a signal before delivering the next."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.n, self.finite = inner, 0, getattr(inner, "finite", True)
        self.signalled = threading.Event()

    def read(self):  # type: ignore[no-untyped-def]
        if self.n == HOLD_AT:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)

                def chained(signum, frame, previous=previous):  # type: ignore[no-untyped-def]
                    self.signalled.set()
                    if callable(previous):
                        previous(signum, frame)

                signal.signal(sig, chained)
            print("test: holding the source", file=sys.stderr, flush=True)
            while not self.signalled.wait(0.05):
                pass
        self.n += 1
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


if HOLD_AT:
    _open = cli._open_source
    cli._open_source = lambda cfg: HeldSource(_open(cfg))
sys.exit(cli.main())
