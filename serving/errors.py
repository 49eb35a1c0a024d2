"""Errors raised by the serving package.

    ServingError
    ├── TritonUnavailable     the Triton server cannot be reached or is not ready
    ├── ModelLoadFailed       Triton refused to load a model version
    ├── SmokeTestFailed       a loaded version did not produce a sane completion
    └── RepositoryStateError  the model repository is not in the expected state
"""

from __future__ import annotations


class ServingError(Exception):
    """Root of every error the serving package raises on purpose."""


class TritonUnavailable(ServingError):
    """Triton cannot be reached, or is not live/ready."""


class ModelLoadFailed(ServingError):
    """Triton refused to load a model version; the previous version keeps serving."""


class SmokeTestFailed(ServingError):
    """A freshly loaded version failed its smoke completion; it was not switched in."""


class RepositoryStateError(ServingError):
    """The Triton model repository is not in the state the operation needs."""
