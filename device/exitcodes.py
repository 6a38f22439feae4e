"""One exit-code scheme for `python -m device`, `python -m training` and `python -m convert`
(docs/ARCHITECTURE.md, "Exit codes"):

    0    done
    1    ran, but the result is a refusal: nothing was changed (an enrollment stopped, the converted
         model failed its parity check, a conversion that TensorFlow could not do)
    2    bad configuration, arguments or input (argparse's usage errors are 2 as well)
    3    model bundle problem (missing, damaged, no TFLite runtime)
    4    product database problem
    5    camera problem
    130  interrupted (Ctrl-C, SIGTERM during enrollment)
"""

from __future__ import annotations

from .errors import CameraError, GalleryError, ModelError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_GALLERY = 4
EXIT_CAMERA = 5
EXIT_INTERRUPTED = 130


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an exception a command stops on; None for one it does not expect (a bug:
    let it show its traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ModelError):  # BundleError, RuntimeMissingError
        return EXIT_MODEL
    if isinstance(exc, GalleryError):
        return EXIT_GALLERY
    if isinstance(exc, CameraError):
        return EXIT_CAMERA
    if isinstance(exc, (ValueError, FileNotFoundError)):  # ConfigError is a ValueError
        return EXIT_BAD_INPUT
    return None
