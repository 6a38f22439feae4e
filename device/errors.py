"""Errors the device raises. `ValueError` stays the error for bad input (arguments, files, config
values); these `RuntimeError` subclasses name the hardware and model failures a user must act on."""

from __future__ import annotations


class DeviceError(RuntimeError):
    """Base of the device's runtime failures."""


class CameraError(DeviceError):
    """A frame source could not be opened or stopped delivering frames."""


class ModelError(DeviceError):
    """The model could not be loaded or run."""


class BundleError(ModelError):
    """A model bundle is missing, corrupt, or its model.json disagrees with its .tflite."""


class RuntimeMissingError(ModelError):
    """No TFLite interpreter package is installed."""


class GalleryError(DeviceError):
    """The product database cannot be opened, read or written."""


class ProductExists(ValueError):  # noqa: N818 - named by the contract (docs/ARCHITECTURE.md)
    """A product of that name is already stored (choose another name, append, or delete it)."""


class ProductNotFound(ValueError):  # noqa: N818 - named by the contract
    """No stored product (or view) has that name or id."""


class NearDuplicateView(ValueError):  # noqa: N818 - named by the contract
    """An enrollment view nearly identical to one already taken: the product was not turned."""


class LoopNotRunningError(DeviceError):
    """A command needs the live loop (camera frames, the embedder's thread), which is not running."""
