"""The release, in one place: the package, the wheel and `keras-dstee --version`."""

__version__ = "0.2.0"
