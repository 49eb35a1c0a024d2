"""The models one proxy serves, and which of them a request (and its caller) gets.

Every folder of the model repository that holds the serving pointer file
(``<repository>/<model>/serving.json``) is a served model, and so is ``ProxyConfig.model_name``,
the default, even before anything is deployed for it. Each model gets its own
:class:`serving.completer.VersionRouter`, Triton client and :class:`serving.completer.Completer`,
built on first use and cached, so deploying a second model needs no proxy restart.

Which model a request gets (:meth:`ModelSet.resolve`):

1. the name it carries (the engine in the path, else the body's ``model``), if that is a served
   model the caller may use;
2. no name (Tabby, llama.cpp): the default model if the caller may use it, else the one served
   model the caller may use, if there is exactly one;
3. a name that is not served: the default model when it is the only model served (editors
   send whatever engine name they were configured with, and one model used to accept any).

Anything else is 404 ``model_not_found``, and the same 404 when the model exists but the
caller's key does not reach it, so that a key learns nothing about models it may not use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving._auth import ApiKey
from serving.client import TritonClient
from serving.completer import Completer, CompletionObserver, VersionRouter
from serving.completions import ApiError
from serving.config import ProxyConfig
from serving.repository import POINTER_FILE

NAMES_TTL_S = 1.0
"""How long a listing of the served models is reused (a new model is served within this)."""

ObserverFactory = Callable[[str], CompletionObserver]
"""Builds the metrics observer of one model's completer (given the model name)."""


def not_found(name: str | None) -> ApiError:
    """The one answer for "no such model" and "not yours": the same text either way."""
    what = f"the model {name!r} does not exist or" if name else "no model was named and the default model"
    return ApiError(404, f"{what} is not available to this API key; list the models you may use with "
                         "GET /v1/models and send one as `model` (or as the engine in the path)",
                    param="model", code="model_not_found")


class ModelSet:
    """The served models of one proxy: discovery, request routing and per-model completers."""

    def __init__(self, cfg: ProxyConfig, observer: ObserverFactory | None = None) -> None:
        self.cfg = cfg
        self.default = cfg.model_name
        self.root = Path(cfg.model_repository)
        self._observer = observer or (lambda _name: CompletionObserver())
        self._lock = threading.Lock()
        self._completers: dict[str, Completer] = {}
        self._tritons: dict[str, TritonClient] = {}
        self._names: tuple[float, list[str]] | None = None

    def names(self) -> list[str]:
        """Served model names: the default first, then every deployed model by name.

        Listed from the repository at most every :data:`NAMES_TTL_S` (every request asks), so a
        model deployed while the proxy runs is served within that, without a restart."""
        now = time.monotonic()
        with self._lock:
            if self._names is not None and now - self._names[0] < NAMES_TTL_S:
                return self._names[1]
        names = self._list_names()
        with self._lock:
            self._names = (now, names)
        return names

    def _list_names(self) -> list[str]:
        found = set()
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.is_dir() and os.path.lexists(os.path.join(entry.path, POINTER_FILE)):
                        found.add(entry.name)
        except FileNotFoundError:
            pass
        found.discard(self.default)
        return [self.default, *sorted(found)]

    def visible(self, key: ApiKey | None) -> list[str]:
        """The served models ``key`` may use (all of them when keys are off: ``key`` is None)."""
        return [n for n in self.names() if key is None or key.allows(n)]

    def resolve(self, requested: str | None, key: ApiKey | None) -> str:
        """The model a request naming ``requested`` (or nothing) gets; 404 per the module's rules."""
        names = self.names()
        if requested in names:
            if key is None or key.allows(requested):
                return requested
            raise not_found(requested)
        if requested and len(names) > 1:
            raise not_found(requested)
        # No name, or an unknown name while the default is the only model served.
        if key is None or key.allows(self.default):
            return self.default
        if not requested:
            mine = [n for n in names if key.allows(n)]
            if len(mine) == 1:
                return mine[0]
        raise not_found(requested)

    def completer(self, name: str) -> Completer:
        """``name``'s completer (created on first use; ``name`` must come from :meth:`resolve`)."""
        with self._lock:
            done = self._completers.get(name)
            if done is None:
                done = self._completers[name] = self._build(name)
            return done

    def router(self, name: str) -> VersionRouter:
        return self.completer(name).router

    def triton(self, name: str) -> TritonClient:
        self.completer(name)
        with self._lock:
            return self._tritons[name]

    def version(self, name: str) -> int | None:
        """The version ``name`` serves now, or None when none does."""
        try:
            return self.router(name).version()
        except ApiError:
            return None

    def _build(self, name: str) -> Completer:
        cfg = self.cfg
        router = VersionRouter(cfg.model_repository, name, cfg.default_context_window, family=cfg.family)
        triton = self._tritons[name] = TritonClient(cfg.triton_url, name, timeout_s=cfg.timeout_s)
        return Completer(router, triton, model_name=name, timeout_s=cfg.timeout_s, limits=cfg.limits(),
                         stream_chunk_tokens=cfg.stream_chunk_tokens, strict_suffix=cfg.strict_suffix,
                         strict_context=cfg.strict_context, observer=self._observer(name))
