"""Errors raised by the trainer package.

    TrainerError
    ├── CorpusError            corpus build/update failed; the last good corpus is intact
    │   ├── RepositoryError    unknown repo, unreachable remote, unknown revision
    │   └── ShardCorrupt       a shard's checksum does not match the manifest
    ├── FinetuneError          training could not start or finish
    │   └── TokenOutOfRange    a token id does not fit the model's embedding rows
    ├── EvaluationError        evaluation could not run
    └── FamilyError            unknown or undetectable model family, or a family lacks what was asked
"""

from __future__ import annotations

import families as _families


class TrainerError(Exception):
    """Root of every error the trainer package raises on purpose."""


class CorpusError(TrainerError):
    """A corpus build or update failed; the last good corpus is left intact."""


class RepositoryError(CorpusError):
    """The repository or revision cannot be reached or does not exist."""


class ShardCorrupt(CorpusError):
    """A shard on disk does not match the checksum recorded in the manifest."""


class FinetuneError(TrainerError):
    """Fine-tuning could not start or did not finish."""


class TokenOutOfRange(FinetuneError):
    """A token id is outside the model's embedding rows."""


class EvaluationError(TrainerError):
    """Evaluation could not run."""


class FamilyError(TrainerError, _families.FamilyError):
    """The model family is unknown, cannot be detected, or cannot do what was asked (e.g. FIM)."""
