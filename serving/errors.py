"""Errors raised by the serving package.

    ServingError
    ├── TritonUnavailable       the Triton server cannot be reached or is not ready
    │   ├── TritonTimeout       Triton did not answer within the request's deadline
    │   └── VersionUnavailable  the requested model version is not loaded (mid-swap, unloaded)
    ├── InferenceFailed         Triton answered, but with an error for this request
    ├── ModelLoadFailed         Triton refused to load a model version
    ├── SmokeTestFailed         a loaded version did not produce a sane completion
    └── RepositoryStateError    the model repository is not in the expected state
"""

from __future__ import annotations


class ServingError(Exception):
    """Root of every error the serving package raises on purpose."""


class TritonUnavailable(ServingError):
    """Triton cannot be reached, or is not live/ready."""


class TritonTimeout(TritonUnavailable):
    """Triton did not answer within the deadline given to the client."""


class VersionUnavailable(TritonUnavailable):
    """The model version asked for is not (or no longer) loaded: retry with a fresh pointer."""


class InferenceFailed(ServingError):
    """Triton reached the model but the request failed (bad input, model error)."""


class ModelLoadFailed(ServingError):
    """Triton refused to load a model version; the previous version keeps serving."""


class SmokeTestFailed(ServingError):
    """A freshly loaded version failed its smoke completion; it was not switched in."""


class RepositoryStateError(ServingError):
    """The Triton model repository is not in the state the operation needs."""
