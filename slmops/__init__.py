"""slmops: the library behind the SLMOps pipeline stages (see README.md)."""

__version__ = "0.1.0"
