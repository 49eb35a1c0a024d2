"""LoRA adapter versions of one Triton model: the base loaded once, adapters swapped by a pointer.

Triton's python backend runs every model *version* in its own stub process, so "one base,
many adapters" cannot be one Triton version per adapter. Instead one Triton version holds the
base, and adapter versions live beside the version folders, where Triton does not look
(it reads only numeric folders)::

    <root>/<model>/config.pbtxt            lists the base version only; declares the ``adapter`` input
    <root>/<model>/<B>/                    the base version: model/ (a copy of the base checkpoint),
                                           model.py, artifact.json ({"kind": "adapter-base", "base_digest"})
    <root>/<model>/adapters/<N>/           adapter version N: peft files, tokenizer, repotune-adapter.json,
                                           artifact.json, serving.json {"model", "version": B, "adapter": N}
    <root>/<model>/serving.json            the pointer: a symlink to the serving adapter's serving.json
                                           (before the first adapter, :meth:`AdapterRepository.serve_base`
                                           points it at ``<B>/serving.json``: the bare base serves)

Every request carries the pointer's adapter name (the ``adapter`` input); the backend reads an
adapter with peft the first time it is named and keeps a few in memory. So:

* :meth:`AdapterRepository.publish` copies the adapter in (fsync'd, renamed into place) after
  checking its base by content digest against the model's base. The first publish of a model
  also writes the base version, a *copy* of the base checkpoint (not a reference): a version
  folder must be self-contained and immutable, the repository is what a Triton container
  mounts (a run's checkpoint path may not exist there) and run folders are pruned; it is copied
  once per model, not per adapter.
* :meth:`AdapterRepository.activate` makes sure the base version is loaded (no Triton request
  at all when it is), smoke-completes base + adapter on exactly that pair, then re-points the
  symlink: no model load, no Triton reload, one rename.
* :meth:`~serving.repository.ModelRepository.rollback` is activate on an earlier adapter.

Adding adapter folders changes the model folder, which makes Triton treat the loaded base as
modified at its *next* load request; adapter swaps never send one, and :meth:`ensure_loaded`
sends none while the base is ready. See docs/serving.md, "Adapters".
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from durable import copytree_fsync, fsync_dir, write_atomic, write_json_atomic
from families.adapters import AdapterError, checkpoint_digest, read_manifest, resolve_base
from serving._canary_repo import CANARY_FILE
from serving._repo import POINTER_FILE, ProgressFn, emit, read_json
from serving.canary import CanaryState
from serving.client import TritonClient
from serving.errors import ModelLoadFailed, RepositoryStateError, SmokeTestFailed
from serving.repository import FAILED_FILE, ModelRepository, read_pointer

ADAPTERS_DIR = "adapters"
BARE_BASE = 0
"""The adapter version of the bare base (no adapter version is 0): what a LoRA model serves
before its first adapter, and what :meth:`AdapterRepository.rollback` returns to past the oldest."""
"""The adapter versions' folder inside the model folder (the python backend reads the same name)."""
BASE_KIND = "adapter-base"
"""``artifact.json`` ``kind`` of a base version."""


class AdapterRepository(ModelRepository):
    """One model served as a base plus numbered LoRA adapter versions.

    Same lifecycle and signatures as :class:`~serving.repository.ModelRepository`; versions are
    adapter versions. ``max_batch_size`` and ``max_adapters`` shape the base version's
    ``config.pbtxt`` (Triton's batch, adapters the backend keeps in memory).
    """

    def __init__(self, root: str | Path, model_name: str, triton_url: str | None, keep: int = 3, *,
                 max_batch_size: int = 8, max_adapters: int = 8, gpus: Sequence[int] = (),
                 dtype: str | None = None, **kw: Any) -> None:
        super().__init__(root, model_name, triton_url, keep, **kw)
        self.adapters_dir = self.model_dir / ADAPTERS_DIR
        self.max_batch_size = max_batch_size
        self.max_adapters = max_adapters
        self.gpus, self.dtype = tuple(gpus), dtype
        """Placement of the base version written from now on (:func:`converter.triton_config.python_backend_config`):
        no ``gpus``, the CPU; else ``KIND_GPU`` instances there, in ``dtype``."""

    # -- queries ------------------------------------------------------------------------------

    def current(self) -> int | None:
        """The adapter version the proxy routes to, or ``None``."""
        pointer = read_pointer(self.model_dir)
        return int(pointer["adapter"]) if pointer and pointer.get("adapter") is not None else None

    def base_version(self) -> int | None:
        """The Triton version holding the model's base: the serving adapter's, else the newest."""
        pointer = read_pointer(self.model_dir) or {}
        if pointer.get("version") is not None:
            return int(pointer["version"])
        bases = self._base_numbers()
        return bases[-1] if bases else None

    def versions(self) -> list[dict[str, Any]]:
        """Published adapter versions, oldest first: ``version``, ``serving``, ``failed``,
        ``base_version``, ``source``, ``published``, ``bytes`` (on disk)."""
        serving = self.current()
        out = []
        for number in self._version_numbers():
            adir = self._version_path(number)
            meta = read_json(adir / "artifact.json")
            failed = (adir / FAILED_FILE).read_text().strip() if (adir / FAILED_FILE).exists() else None
            out.append({"version": number, "serving": number == serving, "failed": failed,
                        "backend": "python", "base_version": meta.get("base_version"),
                        "source": meta.get("source"), "published": meta.get("published"),
                        "bytes": _tree_bytes(adir)})
        return out

    # -- publish ------------------------------------------------------------------------------

    def publish(self, artifact: str | Path, progress: ProgressFn | None = None) -> int:
        """Copy an adapter folder in as the next adapter version; returns its number.

        Refused (:class:`RepositoryStateError`) when the folder is not an adapter, its base
        changed since training, or its base is not the model's base. The first adapter of a
        model also writes (and, with a ``triton_url``, loads) the base version.
        """
        artifact = Path(artifact).resolve()
        try:
            manifest = read_manifest(artifact)
            base = resolve_base(artifact)
        except AdapterError as exc:
            raise RepositoryStateError(f"adapter {artifact} refused: {exc}") from exc
        if not (artifact / "adapter_config.json").is_file():
            raise RepositoryStateError(f"adapter {artifact} has no adapter_config.json (peft's "
                                       "save_pretrained output); retrain or re-export it")
        with self._locked():
            self._sweep()
            base_version, new_base = self._base_for(manifest.base_digest, base, progress)
            number = self._copy_adapter(artifact, base_version, manifest.base_digest, progress)
            if new_base and self.triton_url:
                self._ensure_base(self._triton(), base_version)
        return number

    def _base_for(self, digest: str, base: Path, progress: ProgressFn | None) -> tuple[int, bool]:
        """The base version for an adapter trained on ``digest`` (written if the model has none),
        and whether it was written now."""
        current = self.base_version()
        if current is not None:
            found = read_json(self.model_dir / str(current) / "artifact.json").get("base_digest")
            if found != digest:
                raise RepositoryStateError(
                    f"adapter refused: it was trained on base {digest} ({base}), but model "
                    f"{self.model_name!r} serves base {found} (version {current}); retrain the adapter "
                    "on the model's base, or serve it as another model")
            return current, False
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.model_dir))
        try:  # an artifact whose model/ is a link: the one copy is publish's (links are followed)
            from converter.triton_config import python_backend_config

            (staging / "model").symlink_to(base, target_is_directory=True)
            (staging / "config.pbtxt").write_text(python_backend_config(
                self.model_name, self.max_batch_size, gpus=self.gpus, dtype=self.dtype))
            meta = {"backend": "python", "kind": BASE_KIND, "base_digest": digest,
                    "source": str(base)}
            write_json_atomic(staging / "artifact.json", meta)
            return self._publish_locked(staging, meta, progress), True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _copy_adapter(self, artifact: Path, base_version: int, digest: str, progress: ProgressFn | None) -> int:
        emit(progress, "publish", 0, 1)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.model_dir))
        try:
            payload = staging / "a"
            copytree_fsync(artifact, payload)
            number = self._next_adapter()
            write_json_atomic(payload / "artifact.json", {
                "kind": "adapter", "base_version": base_version, "base_digest": digest,
                "source": str(artifact), "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            write_json_atomic(payload / POINTER_FILE,
                              {"model": self.model_name, "version": base_version, "adapter": number})
            self.adapters_dir.mkdir(exist_ok=True)
            payload.rename(self._version_path(number))
            fsync_dir(self.adapters_dir)
            self._set_state(highest_adapter=number)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        emit(progress, "publish", 1, 1, version=number)
        return number

    # -- activate -----------------------------------------------------------------------------

    def activate(self, version: int, progress: ProgressFn | None = None) -> None:
        """Smoke-test base + adapter ``version`` through Triton, then point the proxy at it.

        Loads nothing when the base is loaded (the backend reads the adapter on the smoke
        request). Raises :class:`SmokeTestFailed` (the adapter is marked failed; the serving
        one keeps serving) or :class:`ModelLoadFailed` (the base did not load).
        """
        number = int(version)
        adir = self.version_dir(number)
        base_version = int(read_json(adir / "artifact.json")["base_version"])
        client = self._triton()
        with self._locked():
            self._refuse_during_canary(f"activate adapter {number}")
            old = self.current()
            emit(progress, "load", 0, 3, version=number)
            self._ensure_base(client, base_version)
            emit(progress, "smoke", 1, 3, version=number)
            self._smoke_adapter(client, base_version, number)
            emit(progress, "switch", 2, 3, version=number)
            self._relink(f"{ADAPTERS_DIR}/{number}/{POINTER_FILE}")
            self._set_state(adapter=number, previous_adapter=old if old != number else None,
                            switched_at=time.time())
            self._retain()
            emit(progress, "switch", 3, 3, version=number)

    def serve_base(self, base: str | Path, progress: ProgressFn | None = None) -> int:
        """Write (once) and load the model's base version; with no pointer yet, serve the bare base.

        What a LoRA model answers with before its first adapter: the base it will be trained
        from, smoke-tested, behind a pointer ``{"model", "version": B, "adapter": null}`` that names no adapter
        (the proxy then sends requests without one). An adapter activated later re-points it;
        a pointer already there is left alone. Returns the base version ``B``. Raises
        :class:`RepositoryStateError` when the model already holds another base (by digest).
        """
        base = Path(base).resolve()
        try:
            digest = checkpoint_digest(base)
        except AdapterError as exc:
            raise RepositoryStateError(f"cannot serve base {base}: {exc}") from exc
        client = self._triton()
        with self._locked():
            self._sweep()
            number, _ = self._base_for(digest, base, progress)
            self._ensure_base(client, number)
            if read_pointer(self.model_dir) is None:
                self._smoke(client, number, self.model_dir / str(number))
                self._point_at_base(number)
        return number

    def rollback(self, to: int | None = None, progress: ProgressFn | None = None) -> int:
        """Serve adapter ``to``; by default the newest healthy adapter older than the serving one,
        and past the oldest the bare base (:data:`BARE_BASE`, also accepted as ``to``)."""
        if to is None:
            current = self.current()  # None: the bare base serves, or nothing does; both are the oldest
            older = [v["version"] for v in self.versions()
                     if not v["failed"] and current is not None and v["version"] < current]
            if older:
                to = older[-1]
            elif current is not None and self.base_version() is not None:
                to = BARE_BASE
            else:
                raise RepositoryStateError(
                    f"no earlier healthy version of {self.model_name!r} to roll back to (serving "
                    f"{'the bare base' if current is None else current}; adapters on disk: "
                    f"{[v['version'] for v in self.versions()]})")
        if int(to) == BARE_BASE:
            self.activate_base(progress)
        else:
            self.activate(int(to), progress=progress)
        return int(to)

    def activate_base(self, progress: ProgressFn | None = None) -> None:
        """Smoke-test the bare base through Triton, then point the proxy at it (no adapter): the
        rollback of a model whose first adapter went bad. The adapters stay on disk."""
        base_version = self.base_version()
        if base_version is None:
            raise RepositoryStateError(f"{self.model_name!r} has no base version to serve")
        client = self._triton()
        with self._locked():
            self._refuse_during_canary("serve the bare base")
            old = self.current()
            emit(progress, "load", 0, 3, version=BARE_BASE)
            self._ensure_base(client, base_version)
            emit(progress, "smoke", 1, 3, version=BARE_BASE)
            self._smoke(client, base_version, self.model_dir / str(base_version))
            emit(progress, "switch", 2, 3, version=BARE_BASE)
            self._point_at_base(base_version)
            self._set_state(adapter=None, previous_adapter=old, switched_at=time.time())
            self._retain()
            emit(progress, "switch", 3, 3, version=BARE_BASE)

    # -- canary: a candidate adapter for a share of clients, on the same loaded base --------------

    def start_canary(self, version: int, share: float, progress: ProgressFn | None = None,
                     *, now: float | None = None) -> CanaryState:
        """Smoke-test base + adapter ``version``, then route ``share`` of clients to it; the
        others keep the serving adapter (or the bare base). Nothing is loaded: the backend
        groups each batch by adapter, so both run on the one base."""
        number, share = int(version), float(share)
        if not 0.0 < share < 1.0:
            raise RepositoryStateError(f"a canary share must be between 0 and 1 (exclusive), got {share}; "
                                       "to serve an adapter to everyone, activate it")
        adir = self.version_dir(number)
        base_version = int(read_json(adir / "artifact.json")["base_version"])
        client = self._triton()
        with self._locked():
            self._refuse_during_canary("start another one")
            pointer = read_pointer(self.model_dir)
            if pointer is None or pointer.get("version") != base_version:
                raise RepositoryStateError(f"adapter {number} of {self.model_name!r} is not on the serving base, "
                                           "so there is nothing to compare it with; activate it instead")
            prod = self.current()
            if prod == number:
                raise RepositoryStateError(f"adapter {number} of {self.model_name!r} already serves everyone")
            emit(progress, "smoke", 0, 2, version=number)
            self._smoke_adapter(client, base_version, number)
            state = CanaryState(number, share, time.time() if now is None else float(now))
            write_json_atomic(adir / CANARY_FILE, {"model": self.model_name, "version": base_version,
                                                   "adapter": prod, "canary": state.as_dict()})
            self._relink(f"{ADAPTERS_DIR}/{number}/{CANARY_FILE}")
            self._set_state(canary=state.as_dict())
            emit(progress, "switch", 2, 2, version=number)
        return state

    def promote_canary(self) -> int:
        """Serve the canary adapter to everyone (a pointer switch); returns its version."""
        with self._locked():
            state = self._running_canary("promote")
            old = self.current()
            self._relink(f"{ADAPTERS_DIR}/{state.version}/{POINTER_FILE}")
            self._set_state(adapter=state.version, previous_adapter=old, canary=None, switched_at=time.time())
            self._retain()
        return state.version

    def stop_canary(self) -> int:
        """Everyone back to the serving adapter (or the bare base); returns the canary's version."""
        with self._locked():
            state = self._running_canary("stop")
            prod = self.current()
            if prod is None:
                self._point_at_base(int(self.base_version()))
            else:
                self._relink(f"{ADAPTERS_DIR}/{prod}/{POINTER_FILE}")
            self._set_state(canary=None, canary_stopped=state.as_dict())
        return state.version

    def _smoke_adapter(self, client: TritonClient, base_version: int, number: int) -> None:
        """Smoke-complete base + adapter ``number``; a failure marks the adapter failed and raises
        :class:`SmokeTestFailed` (a retry clears the mark first)."""
        adir = self.version_dir(number)
        (adir / FAILED_FILE).unlink(missing_ok=True)
        try:
            self._smoke(client, base_version, adir, adapter=str(number))
        except SmokeTestFailed as exc:
            write_atomic(adir / FAILED_FILE, f"{exc}\n")
            raise

    def _point_at_base(self, number: int) -> None:
        """The pointer names base version ``number`` and no adapter: the proxy sends requests
        without one and numbers them 0 in completions and telemetry."""
        write_json_atomic(self.model_dir / str(number) / POINTER_FILE,
                          {"model": self.model_name, "version": number, "adapter": None})
        self._relink(f"{number}/{POINTER_FILE}")

    def ensure_loaded(self) -> int | None:
        """Load the serving adapter's base into a (re)started Triton (nothing when it is ready);
        returns the serving adapter version (``None`` if none)."""
        if self.model_dir.is_dir():
            with self._locked():
                self._sweep()
        pointer = read_pointer(self.model_dir) or {}
        if pointer.get("version") is None:
            return None
        with self._locked():
            self._ensure_base(self._triton(), int(pointer["version"]))
        return self.current()

    # -- steps --------------------------------------------------------------------------------

    def _ensure_base(self, client: TritonClient, base_version: int) -> None:
        """Triton serves exactly the base version (no request at all when it already does)."""
        try:
            self._apply(client, self.model_dir / str(base_version), [base_version])
            self._wait_ready(client, base_version)
        except ModelLoadFailed as exc:
            raise ModelLoadFailed(f"the base (version {base_version}) of {self.model_name!r} failed to "
                                  f"load: {exc}") from exc

    def _config_proto(self, vdir: Path, versions: list[int]):
        """The base's config plus the optional ``adapter`` input (BYTES [1]) and ``max_adapters``."""
        from tritonclient.grpc import model_config_pb2

        cfg = super()._config_proto(vdir, versions)
        if not any(i.name == "adapter" for i in cfg.input):
            spec = cfg.input.add()
            spec.name, spec.data_type, spec.optional = "adapter", model_config_pb2.TYPE_STRING, True
            spec.dims.append(1)
        cfg.parameters["max_adapters"].string_value = str(self.max_adapters)
        return cfg

    def _version_numbers(self) -> list[int]:
        if not self.adapters_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.adapters_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def _base_numbers(self) -> list[int]:
        return super()._version_numbers()

    def _version_path(self, version: int) -> Path:
        return self.adapters_dir / str(int(version))

    def _next_adapter(self) -> int:
        # Never reuse an adapter number: the backend caches adapters by name.
        state = read_json(self._state_path())
        return max([0, int(state.get("highest_adapter") or 0), *self._version_numbers()]) + 1

    def _pinned(self) -> set[int]:
        """The previous adapter stays on disk: it is the rollback target in flight."""
        previous = read_json(self._state_path()).get("previous_adapter")
        return {int(previous)} if previous is not None else set()


def open_repository(root: str | Path, model_name: str, *, adapter: bool, **kw: Any) -> ModelRepository:
    """The repository class for a model: :class:`AdapterRepository` for LoRA models, else
    :class:`~serving.repository.ModelRepository` (``kw``: their shared keyword arguments,
    e.g. ``triton_url``, ``keep``)."""
    triton_url = kw.pop("triton_url", None)
    cls = AdapterRepository if adapter else ModelRepository
    return cls(root, model_name, triton_url, **kw)


def _tree_bytes(folder: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return 0
