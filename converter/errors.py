"""Errors raised by the converter package.

    ConversionError
    ├── CheckpointError       the source checkpoint is unreadable or inconsistent
    ├── FileSizeMismatch      an FT file's byte size disagrees with the shape it claims
    └── VerificationFailed    converted logits differ from the reference model
"""

from __future__ import annotations


class ConversionError(Exception):
    """Root of every error the converter package raises on purpose."""


class CheckpointError(ConversionError):
    """The source checkpoint is unreadable, truncated or inconsistent."""


class FileSizeMismatch(ConversionError):
    """A FasterTransformer weight file does not have the size its shape implies."""


class VerificationFailed(ConversionError):
    """The converted model's logits do not match the reference model's."""
