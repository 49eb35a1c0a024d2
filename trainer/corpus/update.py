"""Incremental corpus update: fetch, diff from the last ingested commit, filter, scrub,
dedupe, split, rewrite only the touched shards, commit.

Crash safety (SIGKILL at any point leaves a usable corpus; the next update completes it):

1. every manifest change of an update happens inside one sqlite transaction;
2. new shard contents are first written to hidden temp files (fsynced) next to the shards;
3. the transaction records the planned renames in ``pending`` and COMMITs: the commit point;
4. the temp files are renamed over the shards, ``corpus.json`` is rewritten, ``pending`` cleared.

A crash before 3 leaves the old manifest and old shards (stray temp files are deleted by the
next :func:`recover`); a crash after 3 is rolled forward by :func:`recover`, which every
public entry point runs first under the corpus lock.

This module holds the lock, recovery and that protocol; the work between BEGIN and COMMIT is
:class:`trainer.corpus._apply.CorpusUpdate`, one method per phase.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from durable import fsync_dir, write_atomic
from trainer.corpus import _pool, gitobjects, manifest, mirror
from trainer.corpus._apply import CorpusUpdate
from trainer.corpus._rows import attr_rules
from trainer.corpus.spec import ENGINE_VERSION, CorpusResult, CorpusSpec
from trainer.errors import CorpusError, RepositoryError

log = logging.getLogger(__name__)
Progress = Callable[[dict], None]
_ENGINE_CHANGES = {
    3: "a full build writes the held-out shard of a pinned file",
    4: "secrets scanner widened (unquoted/env/URL/PEM-body/vendor-token values now redacted)",
}
"""Why each engine version forces a rebuild (as in ``spec.ENGINE_VERSION``'s docstring): logged
when an existing corpus is rebuilt for it, so an operator sees why a push took minutes."""
_test_hook: Callable[[str], None] | None = None
"""Called with a stage name at each crash-relevant point; tests use it to SIGKILL the process."""


def _hook(stage: str) -> None:
    if _test_hook is not None:
        _test_hook(stage)


def corpus_dir(home: Path, name: str) -> Path:
    return Path(home) / "corpus" / name


def mirror_dir(home: Path, name: str) -> Path:
    return Path(home) / "mirrors" / f"{name}.git"


@contextmanager
def _locked(cdir: Path) -> Iterator[None]:
    cdir.mkdir(parents=True, exist_ok=True)
    with open(cdir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- recovery

def recover(cdir: Path, summary: bool = False, conn=None) -> None:
    """Roll a committed update forward and delete temp files of an uncommitted one
    (on ``conn`` if given, else on a connection of its own)."""
    db = cdir / "manifest.sqlite"
    if conn is None:
        if not db.exists():
            return
        with contextlib.closing(manifest.connect(db)) as own:
            return recover(cdir, summary, own)
    pending = conn.execute("SELECT tmp, final FROM pending").fetchall()
    _finish(conn, cdir, pending, None if (summary or pending or not (cdir / "corpus.json").exists())
            else False)


def _stray_temps(sdir: Path) -> list[Path]:
    """Hidden temp files in the shard folder (scandir: no per-entry pathlib objects)."""
    try:
        with os.scandir(sdir) as it:
            return [Path(e.path) for e in it if e.name.startswith(".") and e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _finish(conn, cdir: Path, pending: list[tuple[str | None, str]], summary: dict | None | bool,
            strays: bool = True) -> None:
    """Apply the committed renames, remove stray temp files (unless ``strays`` is False: the
    update that just committed cleared them at its start, under the same lock), rewrite
    ``corpus.json`` (from ``summary``, or recomputed when None; not at all when False) and
    clear ``pending``."""
    sdir = cdir / "shards"
    keep = set()
    changed = False
    for tmp, final in pending:
        if tmp is None:
            (sdir / final).unlink(missing_ok=True)
            changed = True
        elif (sdir / tmp).exists():
            os.replace(sdir / tmp, sdir / final)
            changed = True
        keep.add(tmp)
    for stray in _stray_temps(sdir) if strays else ():
        if stray.name not in keep:
            stray.unlink(missing_ok=True)
            changed = True
    if changed:
        fsync_dir(sdir)
    if summary is not False:
        _write_summary(conn, cdir, summary)
    if pending:
        conn.execute("DELETE FROM pending")


def _write_summary(conn, cdir: Path, s: dict | None = None) -> dict:
    if manifest.get_meta(conn, "commit") is None:
        return {}
    s = s if s is not None else manifest.summary(conn)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    data = {
        "name": meta.get("name"),
        "url": mirror.redact_url(meta.get("url") or ""),
        "branch": json.loads(meta.get("spec") or "{}").get("branch"),
        "commit": meta.get("commit"),
        "previous_commit": meta.get("previous_commit"),
        "version": int(meta.get("version") or "0"),
        **s,
        "bytes": s["train_bytes"] + s["heldout_bytes"],
        "shards": {n: {"sha256": h, "records": r, "bytes": b} for n, h, r, b in
                   conn.execute("SELECT name, sha256, records, bytes FROM shards ORDER BY name")},
        "created_at": meta.get("created_at"),
        "updated_at": meta.get("updated_at"),
    }
    # One line per key: json's C encoder only runs without indent=, and the pure-Python one
    # costs ~20 ms for a few hundred shard entries, a third of a small update.
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
    write_atomic(cdir / "corpus.json", ("{\n" + body + "\n}\n").encode())
    return data


# --------------------------------------------------------------------------- update

def update(spec: CorpusSpec, home: str | os.PathLike[str], to_rev: str | None = None, *,
           full: bool = False, progress: Progress | None = None, workers: int | None = None) -> CorpusResult:
    """Bring the corpus of ``spec`` to ``to_rev`` (default: the tracked branch's head).

    Diffs from the last ingested commit recorded in the manifest; with no state, a changed
    spec, a vanished old commit or ``full=True`` the whole tree is processed. Raises
    :class:`RepositoryError` (remote/revision), :class:`ShardCorrupt`, :class:`CorpusError`
    (e.g. disk full); in every case the last good corpus stays as it was.

    ``workers``: processes for the per-file work (filters, secrets, signatures) of an update
    that reads at least ``_pool.MIN_BYTES`` (a full build); default: the cores this process may
    use. Smaller updates stay in this process. The corpus is the same for any value.
    """
    home = Path(home)
    cdir = corpus_dir(home, spec.name)
    started = time.perf_counter()
    report = progress or (lambda event: None)
    with _locked(cdir):
        report({"stage": "fetch", "done": 0, "total": 1})
        repo = mirror.sync(spec.url, mirror_dir(home, spec.name), spec.token)
        report({"stage": "fetch", "done": 1, "total": 1})
        commit = mirror.resolve(repo, to_rev, spec.branch)
        conn = None
        try:
            conn = manifest.connect(cdir / "manifest.sqlite")
            recover(cdir, conn=conn)
            return _update_locked(spec, home, cdir, repo, conn, commit, full, report, started,
                                  workers or _pool.available_cores())
        except (OSError, sqlite3.Error) as exc:
            raise CorpusError(f"corpus {spec.name} update to {commit[:12]} failed: {exc}. The last "
                              "good corpus is intact; free disk space and run the update again.") from exc
        finally:
            if conn is not None:
                conn.close()


def _log_rebuild(spec: CorpusSpec, old_fingerprint: str | None) -> None:
    """Say why an existing corpus is rebuilt in full: an engine version change, or settings."""
    old = json.loads(old_fingerprint or "{}")
    if old.get("engine") != ENGINE_VERSION:
        reasons = "; ".join(f"{v}: {why}" for v, why in sorted(_ENGINE_CHANGES.items())
                            if int(old.get("engine") or 0) < v <= ENGINE_VERSION)
        log.info("corpus %s: full rebuild, engine version %s -> %s (%s)", spec.name,
                 old.get("engine", "unknown"), ENGINE_VERSION, reasons or "engine changed")
        return
    new = json.loads(spec.fingerprint())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    log.info("corpus %s: full rebuild, settings changed: %s", spec.name, ", ".join(changed))


def _update_locked(spec, home, cdir, repo, conn, commit, full, report, started, workers) -> CorpusResult:
    old_commit = manifest.get_meta(conn, "commit")
    version = int(manifest.get_meta(conn, "version", "0"))
    old_fingerprint = manifest.get_meta(conn, "fingerprint")
    if old_commit is not None and old_fingerprint != spec.fingerprint():
        _log_rebuild(spec, old_fingerprint)
        full = True
    full = full or old_commit is None
    if not full and old_commit == commit:
        s = manifest.summary(conn)
        return CorpusResult(spec.name, commit, manifest.get_meta(conn, "previous_commit"), version,
                            False, train_files=s["train_files"], heldout_files=s["heldout_files"],
                            bytes=s["train_bytes"] + s["heldout_bytes"], skipped=s["skipped"],
                            secrets_redacted=s["secrets_redacted"],
                            duration_s=time.perf_counter() - started)
    changes: list[gitobjects.Change] = []
    if not full:
        try:
            changes = gitobjects.diff_trees(repo, old_commit, commit)
        except RepositoryError:
            if mirror.has_commit(repo, old_commit):
                raise
            full = True  # a force push + gc dropped the last ingested commit
    if not full and any(c.path.rsplit("/", 1)[-1] == ".gitattributes" for c in changes):
        full = True  # attributes may change any file's status
    tree_blobs: dict[str, str] = {}
    if full:
        entries = gitobjects.ls_tree(repo, commit)
        changes = [gitobjects.Change(e.path, e) for e in entries]
        tree_blobs = {e.path: e.blob for e in entries}
    else:
        tree_blobs = {p: b for p, b in conn.execute(
            "SELECT path, blob FROM files INDEXED BY files_attrs WHERE path LIKE '%.gitattributes'")}
    rules = attr_rules(repo, tree_blobs)

    conn.execute("BEGIN IMMEDIATE")
    try:
        result, pending, summary = CorpusUpdate(
            spec=spec, home=home, cdir=cdir, repo=repo, conn=conn, commit=commit, old_commit=old_commit,
            version=version, full=full, changes=changes, rules=rules, report=report, hook=_hook,
            workers=workers).run()
    except BaseException:
        conn.execute("ROLLBACK")
        for stray in _stray_temps(cdir / "shards"):
            stray.unlink(missing_ok=True)
        raise
    _hook("committed")
    _finish(conn, cdir, pending, summary, strays=False)
    result.duration_s = time.perf_counter() - started
    report({"stage": "done", "done": 1, "total": 1})
    return result
