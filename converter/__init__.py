"""converter: CodeGen → GPT-J → FasterTransformer, Triton configs, numerical verification.

Heavy libraries (torch, transformers, safetensors) are imported inside the functions that
need them, so ``import converter`` is cheap.
"""

from __future__ import annotations

from converter.convert import ConvertResult as ConvertResult
from converter.convert import check_vocab as check_vocab
from converter.convert import convert as convert
from converter.convert import read_artifact as read_artifact
from converter.errors import CheckpointError as CheckpointError
from converter.errors import ConversionError as ConversionError
from converter.errors import FileSizeMismatch as FileSizeMismatch
from converter.errors import VerificationFailed as VerificationFailed
from converter.triton_config import config_parameters as config_parameters
from converter.triton_config import fastertransformer_config as fastertransformer_config
from converter.triton_config import parse_model_config as parse_model_config
from converter.triton_config import python_backend_config as python_backend_config
from converter.verify import VerifyReport as VerifyReport

__all__ = [
    "CheckpointError",
    "ConversionError",
    "ConvertResult",
    "FileSizeMismatch",
    "VerificationFailed",
    "VerifyReport",
    "check_vocab",
    "config_parameters",
    "convert",
    "fastertransformer_config",
    "parse_model_config",
    "python_backend_config",
    "read_artifact",
]
