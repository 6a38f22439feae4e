"""The device half of prodrec: camera -> background subtraction -> crop -> embedding -> match.

Importing `device` never imports a camera library, TensorFlow or Keras: hardware and heavy
libraries are imported inside the adapters that need them."""

__version__ = "0.1.0"
