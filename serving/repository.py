"""The Triton model repository: numbered versions, an atomic serving pointer, zero-downtime swaps.

Layout (``root`` is ``REPOTUNE_HOME/triton``)::

    <root>/<model>/config.pbtxt       model-level config; its version_policy names the loaded versions
    <root>/<model>/<N>/               one published version: the artifact's payload
                    model/ | <tp>-gpu/ + tokenizer/, artifact.json, config.pbtxt, model.py
    <root>/<model>/<N>/serving.json   {"model", "version": N}, written once at publish
    <root>/<model>/serving.json       the pointer: a symlink to the serving version's <N>/serving.json
    <root>/<model>/.lock              serialises publish/activate/rollback across processes
    <root>/.<model>.state.json        bookkeeping: highest number used, previous version, switch time

Lifecycle, one method each: :meth:`publish` (copy into a temp folder inside the model folder,
fsync, rename to the next number) → :meth:`activate` (list the new version next to the serving
one in ``config.pbtxt``, plain ``load``, wait ready, smoke-complete on *that exact version*,
switch the pointer) → :meth:`rollback` (activate an earlier version; instant when it is still
loaded). A version that fails to load or fails its smoke completion is marked failed and
dropped from ``config.pbtxt`` again; the previous version keeps serving throughout.

Why a swap loads exactly one model: Triton (2.51) decides per version whether a load needs a
new instance. A version that is already serving is only *updated* (no reload) when its own
folder and the model folder's other files (all but ``config.pbtxt`` and the version folders)
have no newer modification time than at its last load, and the config differs at most in
``version_policy``/``instance_group``; Triton's "modification time" of a file is the later of
its mtime and ctime, following symlinks. So: the config is a file, never a load-request
override (an override counts as a change and reloads every version); nothing else in the model
folder is rewritten after a load: the pointer is a symlink re-pointed to an immutable file
written with its version, the lock file is never truncated, and the bookkeeping lives outside
the model folder; and ``model.py`` is byte-compiled at publish time, because the python stub
writing ``<N>/__pycache__`` during the first load would make version N look modified at the next
one. Loads happen only while the pointer names the serving version (whose own folder holds the
link's target), and none at all when the wanted versions are already loaded: the target of a
newer pointer would make an older loaded version look modified.

Why a pointer file and explicit versions instead of Triton's "latest": the proxy names the
pointer's version on every request, so requests go to the new version the moment the pointer
is renamed, while the previous version stays loaded (in-flight requests finish there, and it
is the instant rollback target). See docs/serving.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import py_compile
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable import copytree_fsync, fsync_dir, fsync_tree, write_atomic, write_json_atomic
from serving._canary_repo import CanaryMethods
from serving._files import checkpoint_dir
from serving._repo import POINTER_FILE, ProgressFn, model_lock, relink
from serving._repo import emit as _emit
from serving._repo import read_json as _read_json
from serving.client import TritonClient
from serving.errors import (
    ModelLoadFailed,
    RepositoryStateError,
    ServingError,
    SmokeTestFailed,
)
from serving.textgen import check_text_smoke, speaks_text

log = logging.getLogger(__name__)

FAILED_FILE = "FAILED"
PYTHON_MODEL = Path(__file__).resolve().parent / "python_backend" / "model.py"


@dataclass(frozen=True)
class SmokeTest:
    """The completion a version must produce before it may serve."""

    prompt: str = "def fibonacci(n):\n    "
    """A code prompt every code model should continue."""
    max_tokens: int = 8
    """Tokens to generate (greedy)."""
    min_new_tokens: int = 1
    """Fewer generated tokens than this (e.g. immediate EOS) fails the test."""


def read_pointer(model_dir: Path) -> dict[str, Any] | None:
    """The pointer's content (``{"model", "version"}``), or ``None`` if no version was ever
    activated."""
    path = Path(model_dir) / POINTER_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_tokenizer(version_dir: Path):
    """The tokenizer shipped with a version (``model/`` or ``tokenizer/``, or the folder itself
    for an adapter version, which carries its tokenizer beside the peft files)."""
    from transformers import AutoTokenizer

    ckpt = checkpoint_dir(version_dir)
    if ckpt is None and (Path(version_dir) / "tokenizer_config.json").is_file():
        ckpt = Path(version_dir)
    if ckpt is None:
        raise RepositoryStateError(f"{version_dir} has neither model/ nor tokenizer/; republish the artifact")
    return AutoTokenizer.from_pretrained(str(ckpt))


class ModelRepository(CanaryMethods):
    """One model in a Triton model repository, managed as numbered versions (and a canary,
    :class:`serving._canary_repo.CanaryMethods`).

    ``triton_url`` (``host:port`` of Triton's HTTP endpoint) is needed by :meth:`activate`,
    :meth:`rollback` and :meth:`ensure_loaded`; listing and publishing work without a server.
    """

    def __init__(
        self,
        root: str | Path,
        model_name: str,
        triton_url: str | None,
        keep: int = 3,
        *,
        load_timeout_s: float = 300.0,
        drain_s: float = 0.5,
        smoke: SmokeTest | None = None,
        warm_previous: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(root).resolve()
        self.model_name = model_name
        self.model_dir = self.root / model_name
        self.triton_url = triton_url
        self.keep = keep
        """Published versions to keep on disk (the serving one is never removed)."""
        self.load_timeout_s = load_timeout_s
        """Seconds to wait for a loaded version to report ready."""
        self.drain_s = drain_s
        """Seconds between switching the pointer and unloading the old version, so requests
        that read the old pointer just before the switch still reach a loaded model (only
        when ``warm_previous`` is off)."""
        self.smoke = smoke or SmokeTest()
        self.warm_previous = warm_previous
        """Keep the previous version loaded after a swap (instant rollback, two copies in
        memory); off: unload it after ``drain_s`` (one copy, two during a swap)."""
        self._client: TritonClient | None = None

    # -- queries ------------------------------------------------------------------------------

    def current(self) -> int | None:
        """The version the proxy routes to, or ``None``."""
        pointer = read_pointer(self.model_dir)
        return int(pointer["version"]) if pointer and pointer.get("version") is not None else None

    def versions(self) -> list[dict[str, Any]]:
        """Published versions on disk, oldest first: ``version``, ``serving``, ``failed`` (reason
        or ``None``), ``backend``, ``source``, ``published``."""
        serving = self.current()
        out = []
        for number in self._version_numbers():
            vdir = self.model_dir / str(number)
            meta = _read_json(vdir / "artifact.json")
            failed = (vdir / FAILED_FILE).read_text().strip() if (vdir / FAILED_FILE).exists() else None
            out.append({"version": number, "serving": number == serving, "failed": failed,
                        "backend": meta.get("backend"), "source": meta.get("source"),
                        "published": meta.get("published")})
        return out

    def version_dir(self, version: int) -> Path:
        path = self._version_path(version)
        if not path.is_dir():
            raise RepositoryStateError(
                f"version {version} of {self.model_name!r} is not in {self.model_dir}; "
                f"published versions: {self._version_numbers() or 'none'}")
        return path

    # -- publish ------------------------------------------------------------------------------

    def publish(self, artifact: str | Path, progress: ProgressFn | None = None) -> int:
        """Copy an artifact folder in as the next version; returns its number.

        The copy goes to a temp folder inside the model folder, is fsync'd, then renamed to
        the version number, so Triton never sees a half-written version.
        """
        artifact = Path(artifact).resolve()
        meta = _read_json(artifact / "artifact.json")
        if not meta:
            raise RepositoryStateError(f"{artifact} is not an artifact (no artifact.json); "
                                       "create one with `repotune deploy` or converter.convert()")
        if not (artifact / "config.pbtxt").is_file():
            raise RepositoryStateError(f"artifact {artifact} has no config.pbtxt")
        backend = meta.get("backend", "python")
        if backend == "python" and not (artifact / "model").is_dir():
            raise RepositoryStateError(f"python-backend artifact {artifact} has no model/ folder")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._sweep()
            return self._publish_locked(artifact, meta, progress)

    def _publish_locked(self, artifact: Path, meta: dict[str, Any], progress: ProgressFn | None) -> int:
        """:meth:`publish`'s copy, with the lock held (``artifact`` already checked)."""
        backend = meta.get("backend", "python")
        _emit(progress, "publish", 0, 1)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.model_dir))
        try:
            payload = staging / "v"
            copytree_fsync(artifact, payload)
            if backend == "python":
                shutil.copy2(PYTHON_MODEL, payload / "model.py")
                # Compiled now, so the stub's first import does not write __pycache__
                # into a loaded version (Triton would then reload it at the next swap).
                py_compile.compile(str(payload / "model.py"), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
                fsync_tree(payload)
            meta = dict(meta, published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        artifact_path=str(artifact))
            write_json_atomic(payload / "artifact.json", meta)
            number = self._next_version()
            write_json_atomic(payload / POINTER_FILE, {"model": self.model_name, "version": number})
            target = self.model_dir / str(number)
            payload.rename(target)
            fsync_dir(self.model_dir)
            self._set_state(highest=number)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _emit(progress, "publish", 1, 1, version=number)
        return number

    # -- activate / rollback ------------------------------------------------------------------

    def activate(self, version: int, progress: ProgressFn | None = None) -> None:
        """Load ``version`` next to the serving one, smoke-test it, then switch to it.

        Triton loads only ``version``: the serving one is kept as it is (see the module
        docstring). Raises :class:`ModelLoadFailed` or :class:`SmokeTestFailed` (the version
        is marked failed, dropped from Triton, and the previous one keeps serving).
        """
        version = int(version)
        vdir = self.version_dir(version)
        client = self._triton()
        with self._locked():
            self._refuse_during_canary("activate another version")
            old = self.current()
            if old is not None and not (self.model_dir / str(old)).is_dir():
                old = None
            self._load_beside(client, version, old, progress)
            _emit(progress, "switch", 2, 3, version=version)
            self._switch(version, previous=old if old != version else None)
            if old is not None and old != version and not self.warm_previous:
                time.sleep(self.drain_s)
                self._apply(client, vdir, [version])
            self._retain()
            _emit(progress, "switch", 3, 3, version=version)

    def _load_beside(self, client: TritonClient, version: int, old: int | None,
                     progress: ProgressFn | None) -> None:
        """Load ``version`` next to ``old`` (dropping any other warm version first) and
        smoke-test it; on failure mark it failed, drop it, and raise (``old`` keeps serving)."""
        vdir = self.version_dir(version)
        _emit(progress, "load", 0, 3, version=version)
        loaded = set(self._loaded_versions())
        (vdir / FAILED_FILE).unlink(missing_ok=True)  # before the load: a retry starts clean
        if old is not None and old != version:
            # At most two copies in memory: drop any other warm version before loading.
            room = {old} | ({version} & loaded)
            if loaded - room:
                self._apply(client, self.model_dir / str(old), sorted(room))
        wanted = sorted({v for v in (old, version) if v is not None})
        try:
            self._apply(client, vdir, wanted)
            self._wait_ready(client, version)
        except ModelLoadFailed as exc:
            self._fail(version, old, f"load failed: {exc}")
            raise ModelLoadFailed(
                f"version {version} of {self.model_name!r} failed to load; version {old} keeps "
                f"serving. Triton said: {exc}") from exc
        _emit(progress, "smoke", 1, 3, version=version)
        try:
            self._smoke(client, version, vdir)
        except SmokeTestFailed as exc:
            self._fail(version, old, str(exc))
            raise

    def rollback(self, to: int | None = None, progress: ProgressFn | None = None) -> int:
        """Activate ``to`` (default: the newest healthy version older than the serving one)."""
        current = self.current()
        if to is None:
            older = [v["version"] for v in self.versions()
                     if not v["failed"] and (current is None or v["version"] < current)]
            if not older:
                raise RepositoryStateError(
                    f"no earlier healthy version of {self.model_name!r} to roll back to "
                    f"(serving {current}; on disk: {[v['version'] for v in self.versions()]})")
            to = older[-1]
        self.activate(int(to), progress=progress)
        return int(to)

    def ensure_loaded(self) -> int | None:
        """Load the pointer's version (and the warm previous one, if still on disk) into a
        (re)started Triton; returns the serving version (``None`` if none)."""
        if self.model_dir.is_dir():
            with self._locked():
                self._sweep()
        version = self.current()
        if version is None:
            return None
        vdir = self.version_dir(version)
        client = self._triton()
        with self._locked():
            warm = [v for v in self._loaded_versions()
                    if v != version and (self.model_dir / str(v)).is_dir()
                    and not (self.model_dir / str(v) / FAILED_FILE).exists()]
            wanted = {version, *warm[-1:]} if self.warm_previous else {version}
            canary = self.canary()
            if canary is not None:  # a canary serves beside production: load exactly the two
                wanted = {version, canary.version}
            self._apply(client, vdir, sorted(wanted))
            self._wait_ready(client, version)
        return version

    # -- steps --------------------------------------------------------------------------------

    def _triton(self) -> TritonClient:
        if not self.triton_url:
            raise RepositoryStateError("this ModelRepository has no triton_url; pass one to load models")
        if self._client is None:
            self._client = TritonClient(self.triton_url, self.model_name, timeout_s=60.0,
                                        admin_timeout_s=self.load_timeout_s)
        return self._client

    def _config_proto(self, vdir: Path, versions: list[int]):
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        text = (vdir / "config.pbtxt").read_text(encoding="utf-8")
        try:
            cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            raise ModelLoadFailed(f"{vdir}/config.pbtxt does not parse: {exc}") from exc
        cfg.name = self.model_name
        cfg.version_policy.specific.versions[:] = versions
        if cfg.backend == "fastertransformer" and "model_checkpoint_path" in cfg.parameters:
            # One config serves two versions during a swap: let each load its own
            # <version>/<N>-gpu folder instead of the path baked in for one version.
            del cfg.parameters["model_checkpoint_path"]
        return cfg

    def _config_text(self, vdir: Path, versions: list[int]) -> str:
        from google.protobuf import text_format

        return text_format.MessageToString(self._config_proto(vdir, versions))

    def _loaded_versions(self) -> list[int]:
        """The versions the model-level ``config.pbtxt`` lists (what Triton loads)."""
        import re

        path = self.model_dir / "config.pbtxt"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        match = re.search(r"specific\s*\{([^}]*)\}", text)
        return sorted({int(v) for v in re.findall(r"versions:\s*(\d+)", match.group(1))}) if match else []

    def _apply(self, client: TritonClient, vdir: Path, versions: list[int]) -> None:
        """Make Triton serve exactly ``versions``: write them into the model-level config
        (``vdir``'s config, ``version_policy: specific``), then a plain load. Versions already
        loaded and unchanged on disk are kept as they are; the others are loaded or dropped."""
        text = self._config_text(vdir, versions)
        path = self.model_dir / "config.pbtxt"
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            if all(client.model_ready(v) for v in versions):
                # Nothing to do. A load is not free here: the pointer may now name a newer
                # version than at the last load, which makes older loaded versions look
                # modified (e.g. rolling back to the warm previous version would reload it).
                return
        else:
            write_atomic(path, text)
        client.load()

    def _wait_ready(self, client: TritonClient, version: int) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        while not client.model_ready(version):
            if time.monotonic() > deadline:
                raise ModelLoadFailed(f"version {version} of {self.model_name!r} was not ready "
                                      f"within {self.load_timeout_s:.0f}s")
            time.sleep(0.1)

    def _smoke(self, client: TritonClient, version: int, vdir: Path, adapter: str | None = None) -> None:
        """Greedy completion of a code prompt on exactly ``version`` (with ``adapter`` applied,
        tokenized by ``vdir``'s tokenizer): it must produce tokens inside the vocabulary with
        finite log probabilities."""
        label = f"adapter {adapter} (base version {version})" if adapter else f"version {version}"
        if speaks_text(self.model_dir / str(version)):  # the vLLM backend: text in, text out
            return check_text_smoke(client, version, vdir, self.smoke, f"{label} of {self.model_name!r}", adapter)
        try:
            tokenizer = load_tokenizer(vdir)
            ids = tokenizer(self.smoke.prompt)["input_ids"]
            gen = client.generate(ids, self.smoke.max_tokens, top_k=1, return_log_probs=True,
                                  version=version, adapter=adapter)[0]
        except ServingError as exc:
            raise SmokeTestFailed(f"smoke completion on {label} failed: {exc}") from exc
        vocab = len(tokenizer)
        problems = []
        if len(gen.tokens) < self.smoke.min_new_tokens:
            problems.append(f"it generated {len(gen.tokens)} tokens (need {self.smoke.min_new_tokens})")
        if any(t < 0 or t >= max(vocab, 1) for t in gen.tokens):
            problems.append(f"token ids outside the vocabulary of {vocab}: {gen.tokens}")
        if not math.isfinite(gen.cum_log_prob) or not all(math.isfinite(x) for x in gen.log_probs):
            problems.append(f"log probabilities are not finite ({gen.cum_log_prob}); the weights are broken")
        if problems:
            raise SmokeTestFailed(f"{label} of {self.model_name!r} failed its smoke completion "
                                  f"of {self.smoke.prompt!r}: " + "; ".join(problems))

    def _fail(self, version: int, old: int | None, reason: str) -> None:
        """Drop the rejected version from Triton (``old`` keeps serving untouched) and record why."""
        write_atomic(self.model_dir / str(version) / FAILED_FILE, reason + "\n")
        client = self._triton()
        try:
            if old is not None and old != version:
                self._apply(client, self.model_dir / str(old), [old])
            elif old is None:
                client.unload()
        except ServingError:
            pass  # the old version's state is checked by the caller's next request

    def _retain(self) -> None:
        """Keep the newest ``keep`` versions (always including the serving one); failed
        versions go first."""
        serving = self.current()
        infos = self.versions()
        healthy = [v["version"] for v in infos if not v["failed"]]
        keep = set(healthy[-self.keep:]) | ({serving} if serving is not None else set())
        keep |= self._pinned()
        for info in infos:
            if info["version"] not in keep:
                shutil.rmtree(self._version_path(int(info["version"])), ignore_errors=True)

    def _pinned(self) -> set[int]:
        """Versions retention never removes: the loaded ones (their files are in use)."""
        return set(self._loaded_versions())

    def _version_path(self, version: int) -> Path:
        """Where version ``version``'s folder lives (whether or not it exists)."""
        return self.model_dir / str(int(version))

    # -- pointer and numbering ----------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove what a killed publisher or switch left behind (``.publish-*`` staging folders,
        pointer temp links). Called with the lock held: every live publisher holds it while its
        staging folder exists, so any such folder found here belongs to a dead process."""
        for leftover in self.model_dir.glob(".publish-*"):
            log.warning("%s: removing %s left by an interrupted publish", self.model_name, leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.model_dir.glob(f".{POINTER_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def _version_numbers(self) -> list[int]:
        if not self.model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def _next_version(self) -> int:
        state = _read_json(self._state_path())
        legacy = read_pointer(self.model_dir) or {}  # pointers written before the state file
        # Never reuse a number: Triton may remember a failed version by it.
        return max([0, int(state.get("highest") or 0), int(legacy.get("highest") or 0),
                    *self._version_numbers()]) + 1

    def _state_path(self) -> Path:
        # Outside the model folder: Triton treats any change in there as a change to every version.
        return self.root / f".{self.model_name}.state.json"

    def _set_state(self, **changes: Any) -> None:
        state = _read_json(self._state_path()) or {"model": self.model_name}
        state.update(changes)
        write_json_atomic(self._state_path(), state)

    def _switch(self, version: int, previous: int | None) -> None:
        """Point ``serving.json`` at ``<version>/serving.json`` (atomic symlink rename)."""
        target = self.model_dir / str(version) / POINTER_FILE
        if not target.is_file():  # a version published before pointers lived in version folders
            write_json_atomic(target, {"model": self.model_name, "version": version})
        self._relink(f"{version}/{POINTER_FILE}")
        self._set_state(version=version, previous=previous, switched_at=time.time())

    def _relink(self, target: str) -> None:
        relink(self.model_dir, target)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return model_lock(self.model_dir)
