"""premem's version, in a base module of its own so that any stage can name it without importing the public API."""

__version__ = "0.1.0"
