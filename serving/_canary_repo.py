"""The model repository's canary lifecycle: start (load beside production), promote, stop.

A mixin of :class:`serving.repository.ModelRepository` (kept apart so each module stays one
noun), using its lock, loads, smoke test and pointer. The canary pointer is
``<candidate>/canary.json`` = ``{"model", "version": <production>, "canary": {"version",
"share", "since"}}``, and ``serving.json`` links to it while the canary runs. Written before the
candidate is loaded, like every file a pointer names, so that Triton never sees a loaded
version's folder change (see the module docstring of :mod:`serving.repository`); no load happens
while the canary pointer is in place, and both ways out re-point the link at a ``serving.json``
older than the versions' loads before anything is unloaded.

The proxy reads the same pointer: ``version`` stays production (what :meth:`current` returns,
and what clients outside the share and requests without a client identity get), and
:func:`serving.canary.routes_to_canary` sends a sticky share of clients to the candidate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from durable import write_json_atomic
from serving.canary import CanaryState, canary_of
from serving.errors import RepositoryStateError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

CANARY_FILE = "canary.json"
"""The canary pointer's file, inside the candidate's version folder."""


class CanaryMethods:
    """Canary methods of :class:`serving.repository.ModelRepository` (see the module docstring)."""

    model_dir: Path
    model_name: str
    warm_previous: bool
    drain_s: float

    def canary(self) -> CanaryState | None:
        """The running canary (from the pointer on disk), or None."""
        from serving.repository import read_pointer

        return canary_of(read_pointer(self.model_dir))

    def start_canary(self, version: int, share: float, progress: Callable[[dict[str, Any]], None] | None = None,
                     *, now: float | None = None) -> CanaryState:
        """Load ``version`` beside production, smoke-test it, then route ``share`` of clients to it.

        Production keeps serving everyone else (and everyone, if the load or smoke test fails:
        the candidate is then marked failed, as :meth:`activate` does)."""
        version, share = int(version), float(share)
        if not 0.0 < share < 1.0:
            raise RepositoryStateError(f"a canary share must be between 0 and 1 (exclusive), got {share}; "
                                       "to serve a version to everyone, activate it")
        vdir = self.version_dir(version)
        client = self._triton()
        with self._locked():
            self._refuse_during_canary("start another one")
            prod = self.current()
            if prod is None or not (self.model_dir / str(prod)).is_dir():
                raise RepositoryStateError(f"no production version of {self.model_name!r} serves, so there is "
                                           f"nothing to compare version {version} with; activate it instead")
            if prod == version:
                raise RepositoryStateError(f"version {version} of {self.model_name!r} already serves everyone")
            state = CanaryState(version, share, time.time() if now is None else float(now))
            write_json_atomic(vdir / CANARY_FILE, {"model": self.model_name, "version": prod,
                                                   "canary": state.as_dict()})
            self._load_beside(client, version, prod, progress)
            self._relink(f"{version}/{CANARY_FILE}")
            self._set_state(canary=state.as_dict())
        return state

    def promote_canary(self) -> int:
        """Serve the canary to everyone (a pointer switch: it is loaded already); returns its version."""
        client = self._triton()
        with self._locked():
            state = self._running_canary("promote")
            prod = self.current()
            self._switch(state.version, previous=prod)
            self._set_state(canary=None)
            if not self.warm_previous:
                time.sleep(self.drain_s)
                self._apply(client, self.model_dir / str(state.version), [state.version])
            self._retain()
        return state.version

    def stop_canary(self) -> int:
        """Roll the canary back: everyone to production, then unload the candidate; returns its version."""
        client = self._triton()
        with self._locked():
            state = self._running_canary("stop")
            prod = int(self.current())
            self._relink(f"{prod}/serving.json")
            self._set_state(canary=None, canary_stopped=state.as_dict())
            time.sleep(self.drain_s)  # requests that read the canary pointer just before finish there
            self._apply(client, self.model_dir / str(prod), [prod])
        return state.version

    # -- steps --------------------------------------------------------------------------------

    def _running_canary(self, what: str) -> CanaryState:
        state = self.canary()
        if state is None:
            raise RepositoryStateError(f"no canary of {self.model_name!r} is running, so there is none to {what} "
                                       "(`repotune canary status` shows what serves)")
        return state

    def _refuse_during_canary(self, what: str) -> None:
        state = self.canary()
        if state is not None:
            raise RepositoryStateError(
                f"a canary of version {state.version} of {self.model_name!r} is running; promote or stop it "
                f"(`repotune canary promote` / `repotune canary stop`) before you {what}")
