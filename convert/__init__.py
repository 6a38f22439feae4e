"""Export a trained extractor to a quantised TFLite model bundle the device reads.

    python -m convert RUN_DIR --quant int8 --calibration DIR --out BUNDLE_DIR

`convert_run` is the Python API behind the command. TensorFlow is imported only when a conversion
runs, so `import convert` stays cheap."""

from __future__ import annotations

from .pipeline import QUANT_MODES, ConvertError, ParityError, convert_run

__version__ = "0.1.0"
__all__ = ["QUANT_MODES", "ConvertError", "ParityError", "__version__", "convert_run"]
