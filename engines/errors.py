"""Typed errors of the inference layer; each message says what was wrong."""


class EngineError(Exception):
    """Base class for every error raised by engines/."""


class ImageError(EngineError, ValueError):
    """An image that cannot be read or converted to an 8-bit RGB frame."""


class ModelError(EngineError, RuntimeError):
    """A model file or card that does not fit the role it is used for."""
