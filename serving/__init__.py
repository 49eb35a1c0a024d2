"""serving: the Triton model repository (publish, activate, roll back), the embedded Triton
launcher, RepoTune's python-backend model, and the completion proxy (OpenAI/FauxPilot, llama.cpp
and Tabby protocols).

Heavy libraries (tritonclient, transformers, flask) are imported inside the functions that need
them, so ``import serving`` is cheap.
"""

from __future__ import annotations

from serving._auth import ApiKey as ApiKey
from serving.client import Generation as Generation
from serving.client import TritonClient as TritonClient
from serving.completer import Completer as Completer
from serving.completer import CompletionObserver as CompletionObserver
from serving.completer import VersionRouter as VersionRouter
from serving.completions import ApiError as ApiError
from serving.completions import CompletionRequest as CompletionRequest
from serving.completions import RequestLimits as RequestLimits
from serving.errors import InferenceFailed as InferenceFailed
from serving.errors import ModelLoadFailed as ModelLoadFailed
from serving.errors import RepositoryStateError as RepositoryStateError
from serving.errors import ServingError as ServingError
from serving.errors import SmokeTestFailed as SmokeTestFailed
from serving.errors import TritonTimeout as TritonTimeout
from serving.errors import TritonUnavailable as TritonUnavailable
from serving.errors import VersionUnavailable as VersionUnavailable
from serving.models import ModelSet as ModelSet
from serving.proxy import VERSION_HEADER as VERSION_HEADER
from serving.proxy import ProxyConfig as ProxyConfig
from serving.proxy import create_proxy_app as create_proxy_app
from serving.repository import ModelRepository as ModelRepository
from serving.repository import SmokeTest as SmokeTest
from serving.triton import TritonServer as TritonServer
from serving.triton import tritonserver_binary as tritonserver_binary

__all__ = [
    "VERSION_HEADER",
    "ApiError",
    "ApiKey",
    "Completer",
    "CompletionObserver",
    "CompletionRequest",
    "Generation",
    "InferenceFailed",
    "ModelLoadFailed",
    "ModelRepository",
    "ModelSet",
    "ProxyConfig",
    "RepositoryStateError",
    "RequestLimits",
    "ServingError",
    "SmokeTest",
    "SmokeTestFailed",
    "TritonClient",
    "TritonServer",
    "TritonTimeout",
    "TritonUnavailable",
    "VersionRouter",
    "VersionUnavailable",
    "create_proxy_app",
    "tritonserver_binary",
]
