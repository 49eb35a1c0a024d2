"""Run a fine-tune through DeepSpeed's launcher: every rank of one machine, or one node's share.

:func:`launch` starts ``python -m deepspeed.launcher.runner``, which starts ``python -m
trainer.finetune --config <json>`` once per GPU (or per CPU rank with ``DS_ACCELERATOR=cpu``).
Three shapes, chosen by the arguments and the config's node fields:

* **one node** — ``gpus`` / ``include``: the ranks of this machine.
* **hostfile, over ssh** — ``hostfile`` with ``node_rank=None``: DeepSpeed reaches every host of
  the hostfile with pdsh (passwordless ssh, the same paths everywhere) from this one process.
* **no ssh** — ``node_rank`` set: this process starts only its own node's ranks
  (``--no_ssh --node_rank``); the same command runs on every node, each with its own
  ``node_rank``, all pointing at node 0's ``master_addr:master_port``. Without a hostfile one
  is written with ``num_nodes`` lines of ``gpus`` slots (the names are labels: nothing
  resolves or reaches them).

Rank 0 prints one ``REPOTUNE_PROGRESS {json}`` line per logging step; :func:`launch` streams
the combined log to a file and turns those lines into ``progress`` calls.

Stopping: the launcher runs in its own process group so it can be stopped whole. If this
process is asked to stop (SIGTERM, SIGHUP, Ctrl-C) while it waits, it terminates that group
first and then stops as it was asked. If it is killed outright (SIGKILL) the ranks lose the
pipe they log to and fail at their next log line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable import write_atomic, write_json_atomic
from trainer.errors import FinetuneError
from trainer.progress import PROGRESS_PREFIX, ProgressFn, parse_progress_line

if TYPE_CHECKING:  # trainer.finetune re-exports this module; import it lazily to avoid a cycle
    from trainer.finetune import FinetuneConfig, TrainResult

DEFAULT_MASTER_PORT = 29500
"""Rendezvous port of a multi-node run when the config gives none (DeepSpeed's and torch's default)."""

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Rendezvous variables the launcher assigns per rank; a leaked one would misdirect a child."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a single-node rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_launch_command(
    config_path: Path | str,
    *,
    gpus: int | None = None,
    include: str | None = None,
    hostfile: Path | str | None = None,
    master_port: int | None = None,
    python: str | None = None,
    num_nodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
) -> list[str]:
    """The ``deepspeed`` launcher command that runs ``python -m trainer.finetune --config``.

    ``gpus`` → ``--num_gpus`` (ranks per host); ``include`` → ``--include`` (e.g.
    ``localhost:1,2``; excludes ``gpus``); ``hostfile`` → ``--hostfile`` (multi-node, MPI style
    ``host slots=N`` lines); ``num_nodes`` → ``--num_nodes`` (the first N hosts); ``node_rank``
    → ``--no_ssh --node_rank`` (start only this node's ranks; needs a hostfile and
    ``master_addr``).
    """
    if gpus is not None and include:
        raise FinetuneError("give either gpus (--num_gpus) or include (--include localhost:1,2), not both")
    cmd = [python or sys.executable, "-u", "-m", "deepspeed.launcher.runner"]
    if hostfile:
        cmd += ["--hostfile", str(hostfile)]
    if include:
        cmd += ["--include", include]
    if num_nodes is not None and num_nodes > 1:
        cmd += ["--num_nodes", str(int(num_nodes))]
    if gpus is not None:
        cmd += ["--num_gpus", str(int(gpus))]
    if node_rank is not None:
        cmd += ["--no_ssh", "--node_rank", str(int(node_rank))]
    if master_addr:
        cmd += ["--master_addr", master_addr]
    if master_port:
        cmd += ["--master_port", str(int(master_port))]
    cmd += ["--no_local_rank", "--module", "trainer.finetune", "--config", str(config_path)]
    return cmd


def launch_problems(cfg: FinetuneConfig, *, gpus: int | None = None, include: str | None = None,
                    hostfile: Path | str | None = None) -> list[str]:
    """Every reason the node settings cannot be launched, collected before failing once."""
    found = []
    if cfg.num_nodes < 1:
        found.append(f"num_nodes={cfg.num_nodes}: must be at least 1")
    if cfg.dist_timeout_s < 1:
        found.append(f"dist_timeout_s={cfg.dist_timeout_s}: must be at least 1 second")
    if cfg.node_rank is None:
        if cfg.num_nodes > 1 and not hostfile:
            found.append(f"num_nodes={cfg.num_nodes} needs either a hostfile (one launcher reaches every "
                         "node over ssh) or node_rank (run the same command on every node, no ssh)")
        return found
    if not 0 <= cfg.node_rank < max(cfg.num_nodes, 1):
        found.append(f"node_rank={cfg.node_rank}: must be in 0..{cfg.num_nodes - 1} (num_nodes={cfg.num_nodes})")
    if cfg.num_nodes <= 1:
        return found  # a single node: node_rank 0 changes nothing
    if not cfg.master_addr:
        found.append("master_addr is required with node_rank: the address of node 0 that every node "
                     "can reach (e.g. 10.0.0.1; 127.0.0.1 only when all nodes share this machine)")
    if include:
        found.append("include cannot be combined with node_rank: give gpus (ranks per node) instead")
    if not hostfile and gpus is None:
        found.append("gpus (ranks per node) is required with node_rank and no hostfile")
    return found


def _node_files(cfg: FinetuneConfig, out: Path, gpus: int | None,
                hostfile: Path | str | None) -> tuple[Path, Path | str | None]:
    """Write the config the ranks read (and the no-ssh hostfile); return both paths.

    Nodes share ``output_dir`` (the shared volume), so each node writes its own config file;
    the generated hostfile is the same on every node."""
    no_ssh = cfg.node_rank is not None and cfg.num_nodes > 1
    config_path = out / (f"launch-config-node{cfg.node_rank}.json" if no_ssh else "launch-config.json")
    write_json_atomic(config_path, cfg.to_dict())
    if no_ssh and not hostfile:
        hostfile = out / "launch-hostfile"
        write_atomic(hostfile, "".join(f"node-{n} slots={int(gpus or 1)}\n" for n in range(cfg.num_nodes)))
    return config_path, hostfile


def launch(
    cfg: FinetuneConfig,
    *,
    gpus: int | None = None,
    include: str | None = None,
    hostfile: Path | str | None = None,
    log_path: Path | str,
    env: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
    master_port: int | None = None,
    timeout_s: float | None = None,
) -> TrainResult:
    """Run the fine-tune through the ``deepspeed`` launcher and wait for it.

    ``env`` adds variables for every rank (``NCCL_DEBUG=INFO``, ``NCCL_SOCKET_IFNAME=eth0``,
    ``DS_ACCELERATOR=cpu`` …): the launcher exports NCCL_*/PYTHON*/… to remote hosts itself.
    The combined log of this node's ranks is written to ``log_path`` as it arrives.
    ``master_port`` overrides ``cfg.master_port``. On a multi-node run every node returns the
    same :class:`TrainResult` (read from ``train.json`` on the shared ``output_dir``).
    """
    from trainer.finetune import TrainResult

    problems = cfg.problems() + launch_problems(cfg, gpus=gpus, include=include, hostfile=hostfile)
    if problems:
        raise FinetuneError("cannot start fine-tuning:\n  - " + "\n  - ".join(problems))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    multi = cfg.num_nodes > 1
    # A free port is only known free here; with a hostfile node 0 may be another machine.
    master_port = master_port or cfg.master_port or (DEFAULT_MASTER_PORT if multi or hostfile else free_port())
    config_path, hostfile = _node_files(cfg, out, gpus, hostfile)
    cmd = build_launch_command(config_path, gpus=gpus, include=include, hostfile=hostfile,
                               master_port=master_port, num_nodes=cfg.num_nodes if multi else None,
                               node_rank=cfg.node_rank if multi else None,
                               master_addr=cfg.master_addr if multi or hostfile else None)
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    for key in DIST_VARS:
        child_env.pop(key, None)  # the launcher assigns these per rank
    where = f"node {cfg.node_rank} of {cfg.num_nodes}" if multi and cfg.node_rank is not None else "training"
    rc, tail = _run_streaming(cmd, child_env, Path(log_path), progress, timeout_s, master_port, where)
    if rc != 0:
        raise FinetuneError(_failure_message(rc, tail, where, Path(log_path), out, multi))
    summary = out / "train.json"
    if not summary.is_file():
        raise FinetuneError(f"training finished but wrote no {summary}; see {log_path}")
    return TrainResult.from_dict(json.loads(summary.read_text()))


def _run_streaming(cmd: list[str], env: dict[str, str], log_path: Path, progress: ProgressFn | None,
                   timeout_s: float | None, master_port: int, where: str) -> tuple[int, list[str]]:
    """Start the launcher in its own process group, stream its output; (exit status, last lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, errors="replace", start_new_session=True)
        try:
            with _stop_signals_raise() as stopped:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    tail = (tail + [line.rstrip()])[-20:]
                    event = parse_progress_line(line)
                    if event is not None and progress is not None:
                        progress(event)
                    if deadline and time.monotonic() > deadline:
                        raise FinetuneError(f"{where} exceeded {timeout_s} s; see {log_path}")
                rc = proc.wait()
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            remove_shm_buffers(master_port)
    if stopped:
        _redeliver(stopped[0])
        raise FinetuneError(f"{where} was stopped by {signal.Signals(stopped[0]).name}; its ranks were terminated")
    return rc, tail


class _Stopped(BaseException):
    """Raised inside the wait when this process is asked to stop (a BaseException, like KeyboardInterrupt)."""


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[list[int]]:
    """While waiting, turn SIGTERM/SIGHUP into an exception so ``finally`` stops the launcher group.

    Yields a list that holds the signal number once one arrived. Python's default for SIGTERM
    is to die on the spot, which would leave the launcher's own process group running. Only
    the main thread can set handlers; elsewhere (an RQ job in a thread, a test) nothing changes.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield received
    except _Stopped:
        pass  # the caller sees `received` and re-delivers the signal after cleaning up
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _redeliver(signum: int) -> None:
    """Stop as the signal asked, now that the ranks are gone: run the previous disposition."""
    os.kill(os.getpid(), signum)


def _failure_message(rc: int, tail: list[str], where: str, log_path: Path, out: Path, multi: bool) -> str:
    from trainer.finetune import last_complete_checkpoint

    if rc < 0:
        how = f"the deepspeed launcher was killed by {signal.Signals(-rc).name}"
    else:
        how = f"the deepspeed launcher exited with status {rc}"
    errors = [line for line in tail if line.lstrip().startswith("error:") or "] error:" in line]
    last = last_complete_checkpoint(out / "checkpoints")
    rerun = "rerun the same command on every node" if multi else "rerun the same command"
    resume = (f"The last complete checkpoint is {last}: {rerun} to resume from it."
              if last else f"No checkpoint was completed: {rerun} to start again from step 0.")
    shown = errors[-2:] or tail[-8:]
    return (f"{where}: {how}. Last lines:\n  " + "\n  ".join(shown) + f"\n{resume}\nFull log: {log_path}")


_PEER_LOST_HINTS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                    "no route to host", "connection refused")
"""Lower-cased fragments of gloo/NCCL/TCPStore errors that mean a peer is gone or silent."""


def _lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank went away (or stopped answering)."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(hint in text for hint in _PEER_LOST_HINTS)


def peer_lost_error(cfg: FinetuneConfig, exc: BaseException) -> FinetuneError | None:
    """The error a rank reports when a collective failed because a peer went away; None otherwise.

    It names the rank and node, says what probably happened, and how to resume."""
    from trainer.finetune import last_complete_checkpoint

    if not _lost_peer(exc):
        return None
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    node = os.environ.get("CROSS_RANK", cfg.node_rank if cfg.node_rank is not None else 0)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    last = last_complete_checkpoint(Path(cfg.output_dir) / "checkpoints")
    resume = f"it resumes from {last}" if last else "no checkpoint was completed, so it starts again"
    return FinetuneError(
        f"rank {rank} of {world} (node {node}) lost contact with the other ranks: {first}. "
        f"A node died, was stopped, or the network between nodes dropped (a silent peer is given "
        f"dist_timeout_s={cfg.dist_timeout_s} s). Rerun the same command on every node: {resume}.")


def remove_shm_buffers(master_port: int, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Delete the shared-memory all-reduce buffers DeepSpeed's CPU backend leaves behind.

    They are named ``deepspeed_allreduce_buffer_<n>_<addr>_<port>_<rank>`` (about 66 MB per
    rank) and outlive the ranks; without this every launch on a CPU host leaks them."""
    removed = []
    for path in shm.glob(f"deepspeed_allreduce_buffer_*_{int(master_port)}_*"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group (its handler stops the ranks), SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The runner may exit before the ranks it started; take the rest of the group with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.launch --config run.json --log node.log [--gpus N]``: one node's launcher.

    The same as ``repotune train`` in launcher mode, for a config already written as JSON
    (scripts, and the two-node tests that start each node as its own process)."""
    from trainer.finetune import FinetuneConfig

    parser = argparse.ArgumentParser(prog="python -m trainer.launch", description=main.__doc__)
    parser.add_argument("--config", required=True, help="FinetuneConfig as JSON (node fields included)")
    parser.add_argument("--log", required=True, help="this node's combined rank log")
    parser.add_argument("--gpus", type=int, default=None, help="ranks per node (--num_gpus)")
    parser.add_argument("--hostfile", default=None, help="DeepSpeed hostfile")
    parser.add_argument("--timeout-s", type=float, default=None, help="give up after this many seconds")
    args = parser.parse_args(argv)
    cfg = FinetuneConfig.from_json(args.config)
    try:
        result = launch(cfg, gpus=args.gpus, hostfile=args.hostfile, log_path=args.log,
                        timeout_s=args.timeout_s)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps({"checkpoint": str(result.checkpoint), "steps": result.steps,
                      "heldout_loss": result.heldout_loss}), flush=True)
    return 0


__all__ = [
    "DEFAULT_MASTER_PORT",
    "PROGRESS_PREFIX",
    "build_launch_command",
    "free_port",
    "launch",
    "launch_problems",
    "main",
    "parse_progress_line",
    "peer_lost_error",
    "remove_shm_buffers",
]

if __name__ == "__main__":
    sys.exit(main())
