"""One exit-code scheme for device, training and convert."""

from __future__ import annotations

import pytest

from device.config import ConfigError
from device.errors import BundleError, CameraError, GalleryError, RuntimeMissingError
from device.exitcodes import exit_code_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValueError("bad"), 2),
        (ConfigError("bad key"), 2),
        (FileNotFoundError("x"), 2),
        (BundleError("damaged"), 3),
        (RuntimeMissingError("no litert"), 3),
        (GalleryError("disk full"), 4),
        (CameraError("unplugged"), 5),
        (KeyboardInterrupt(), 130),
        (RuntimeError("a bug"), None),
    ],
)
def test_exit_code_for(exc: BaseException, code: int | None) -> None:
    assert exit_code_for(exc) == code


def test_the_three_command_lines_use_the_scheme() -> None:
    import convert.cli
    import device.cli
    import device.exitcodes as ec

    assert (device.cli.EXIT_CONFIG, device.cli.EXIT_MODEL, device.cli.EXIT_INTERRUPTED) == (
        ec.EXIT_BAD_INPUT,
        ec.EXIT_MODEL,
        ec.EXIT_INTERRUPTED,
    )
    assert convert.cli.EXIT_FAILED == ec.EXIT_FAILED and convert.cli.exit_code_for is exit_code_for
