"""Desktop training: MobileNetV2 + ArcFace-family heads -> a single-input embedding extractor.

Python API (TensorFlow is imported lazily, so `import training` stays cheap):
    from training.config import FitConfig
    from training.fit import fit
    from training.model import build_extractor, load_extractor
    from training.run import read_run_config, write_run_config
    from training.data import scan_dataset
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
