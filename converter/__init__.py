"""converter: CodeGen → GPT-J → FasterTransformer, Triton configs, numerical verification.

Heavy libraries (torch, transformers, safetensors) are imported inside the functions that
need them, so ``import converter`` is cheap.
"""

from __future__ import annotations

from converter.convert import ConvertResult as ConvertResult
from converter.convert import check_artifact as check_artifact
from converter.convert import check_vocab as check_vocab
from converter.convert import convert as convert
from converter.convert import read_artifact as read_artifact
from converter.errors import CheckpointError as CheckpointError
from converter.errors import ConversionError as ConversionError
from converter.errors import FileSizeMismatch as FileSizeMismatch
from converter.errors import VerificationFailed as VerificationFailed
from converter.fastertransformer import FTConfig as FTConfig
from converter.fastertransformer import check_ft_files as check_ft_files
from converter.fastertransformer import gptj_to_fastertransformer as gptj_to_fastertransformer
from converter.gptj import codegen_to_gptj as codegen_to_gptj
from converter.gptj import infer_qkv_blocks as infer_qkv_blocks
from converter.triton_config import config_parameters as config_parameters
from converter.triton_config import fastertransformer_config as fastertransformer_config
from converter.triton_config import parse_model_config as parse_model_config
from converter.triton_config import python_backend_config as python_backend_config
from converter.triton_config import with_checkpoint_version as with_checkpoint_version
from converter.verify import VerifyReport as VerifyReport
from converter.verify import verify as verify
from converter.weight_maps import CODEGEN_DROP as CODEGEN_DROP
from converter.weight_maps import CODEGEN_TO_GPTJ as CODEGEN_TO_GPTJ
from converter.weight_maps import GPTJ_DROP as GPTJ_DROP
from converter.weight_maps import GPTJ_TO_FT as GPTJ_TO_FT

__all__ = [
    "CODEGEN_DROP",
    "CODEGEN_TO_GPTJ",
    "GPTJ_DROP",
    "GPTJ_TO_FT",
    "CheckpointError",
    "ConversionError",
    "ConvertResult",
    "FTConfig",
    "FileSizeMismatch",
    "VerificationFailed",
    "VerifyReport",
    "check_artifact",
    "check_ft_files",
    "check_vocab",
    "codegen_to_gptj",
    "config_parameters",
    "convert",
    "fastertransformer_config",
    "gptj_to_fastertransformer",
    "infer_qkv_blocks",
    "parse_model_config",
    "python_backend_config",
    "read_artifact",
    "verify",
    "with_checkpoint_version",
]
