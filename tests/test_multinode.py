"""Two nodes, one machine: DeepSpeed's no-ssh multi-node launch with real processes.

Each "node" is its own ``python -m trainer.launch`` process (what ``repotune train
--num-nodes 2 --node-rank R`` runs) with one CPU rank, both meeting at 127.0.0.1 over gloo.
The output folder is shared, as ``REPOTUNE_HOME`` is shared by real nodes. Node death is a
SIGKILL of one node's launcher process group; stopping is a SIGTERM of the launching process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures.base import free_port
from tests.fixtures.training import Shards
from trainer.errors import FinetuneError
from trainer.finetune import FinetuneConfig, last_complete_checkpoint, launch
from trainer.launch import build_launch_command

NODE_TIMEOUT_S = 400
"""Upper bound for one node process on a loaded 2-core machine (imports, shm op, training)."""


def _config(model: Path, shards: Shards, out: Path, **overrides) -> FinetuneConfig:
    values = dict(base=str(model), train_files=[str(p) for p in shards.train],
                  heldout_files=[str(p) for p in shards.heldout], output_dir=str(out),
                  learning_rate=3e-3, per_device_batch=4, max_steps=8, eval_every=4,
                  save_every=100, log_every=4, deepspeed="zero2", dist_timeout_s=60)
    values.update(overrides)
    return FinetuneConfig(**values)


class Node:
    """One node's launcher process, started like ``repotune train --node-rank R`` would."""

    def __init__(self, cfg: FinetuneConfig, rank: int | None, folder: Path, gpus: int = 1) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"node{rank if rank is not None else ''}"
        config = folder / f"{name}.json"
        data = cfg.to_dict()
        if rank is not None:
            data.update(num_nodes=2, node_rank=rank, master_addr="127.0.0.1")
        config.write_text(json.dumps(data))
        self.log = folder / f"{name}.log"
        self.stderr_path = folder / f"{name}.stderr"
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "lo"}
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainer.launch", "--config", str(config), "--log", str(self.log),
                 "--gpus", str(gpus), "--timeout-s", str(NODE_TIMEOUT_S)],
                env=env, stdout=subprocess.PIPE, stderr=err, text=True)

    def wait(self, timeout: float = NODE_TIMEOUT_S + 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def launcher(self) -> psutil.Process:
        """The deepspeed runner this node process started (leader of the node's process group)."""
        deadline = time.monotonic() + 60
        while True:
            children = psutil.Process(self.proc.pid).children()
            if children:
                return children[0]
            assert time.monotonic() < deadline, "the node never started its launcher"
            time.sleep(0.05)  # waiting for a process to appear: there is nothing to block on


def _two_nodes(cfg: FinetuneConfig, folder: Path) -> tuple[Node, Node]:
    return Node(cfg, 0, folder), Node(cfg, 1, folder)


def _finish(nodes: tuple[Node, ...]) -> list[int]:
    try:
        return [node.wait() for node in nodes]
    finally:
        for node in nodes:
            node.stop()


def _heldout_loss_of(checkpoint: Path, shards: Shards) -> float:
    """Held-out loss of a saved checkpoint, computed here from the files alone (proves it loads)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.corpus import read_records

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    text = "\n".join(r["text"] for r in read_records(shards.heldout))
    ids = tok(text, return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_nodes_on_loopback_train_like_one_node_with_two_ranks(tiny_model, corpus_shards,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    two = _config(tiny_model, corpus_shards, tmp_path / "two", master_port=port)
    nodes = _two_nodes(two, tmp_path / "nodes")
    assert _finish(nodes) == [0, 0], nodes[0].stderr + nodes[1].stderr
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))

    summary = json.loads((tmp_path / "two" / "train.json").read_text())
    assert summary["extras"]["world_size"] == 2 and summary["extras"]["num_nodes"] == 2
    assert summary["steps"] == 8 and summary["tokens"] == 8 * 4 * 2 * 256
    for rank, node in enumerate(nodes):
        text = node.log.read_text()
        assert "--no_ssh" in text and f"--node_rank {rank}" in text
        assert f"node_rank={rank}" in text and "dist_world_size=2" in text, text[-2000:]
        assert json.loads(node.proc.stdout.read())["steps"] == 8  # every node reports the result

    # The same data and seed on one node with two ranks: the network path changes nothing.
    one = launch(_config(tiny_model, corpus_shards, tmp_path / "one"), gpus=2,
                 log_path=tmp_path / "one.log", env={"DS_ACCELERATOR": "cpu"}, timeout_s=NODE_TIMEOUT_S)
    assert one.extras["world_size"] == 2 and one.extras["num_nodes"] == 1
    assert summary["heldout_loss"] == pytest.approx(one.heldout_loss, rel=1e-3, abs=1e-3)
    assert summary["heldout_loss"] < summary["heldout_curve"][0][1]
    loaded_two = _heldout_loss_of(tmp_path / "two", corpus_shards)
    loaded_one = _heldout_loss_of(one.checkpoint, corpus_shards)
    assert loaded_two == pytest.approx(loaded_one, rel=1e-3, abs=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_dead_node_fails_both_sides_clearly_and_the_run_resumes(tiny_model, corpus_shards,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(tiny_model, corpus_shards, out, master_port=free_port(), max_steps=12,
                  save_every=3, eval_every=6, log_every=3)
    nodes = _two_nodes(cfg, tmp_path / "first")
    try:
        node1_group = nodes[1].launcher().pid
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while last_complete_checkpoint(out / "checkpoints") is None:
            assert all(n.proc.poll() is None for n in nodes), nodes[0].stderr + nodes[1].stderr
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)  # polling the shared folder for a finished save
        os.killpg(node1_group, signal.SIGKILL)  # node 1 dies: its launcher and its rank
        killed_at = time.monotonic()
        codes = [node.wait(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.stop()
    # Bounded: the survivor notices the dead peer long before any default timeout (30 min).
    assert time.monotonic() - killed_at < 150
    assert codes == [1, 1]
    survivor, dead = nodes[0].stderr, nodes[1].stderr
    assert "node 0 of 2" in survivor and "lost contact with the other ranks" in survivor, survivor
    assert "node 1 of 2" in dead and "killed by SIGKILL" in dead, dead
    for text in (survivor, dead):
        assert "rerun the same command on every node" in text
    assert not (out / "train.json").exists()
    last = last_complete_checkpoint(out / "checkpoints")
    assert last is not None and f"The last complete checkpoint is {last}" in survivor
    resumed_step = int(last.name.split("-")[1])
    assert 0 < resumed_step < 12

    again = _two_nodes(cfg, tmp_path / "again")
    assert _finish(again) == [0, 0], again[0].stderr + again[1].stderr
    summary = json.loads((out / "train.json").read_text())
    assert summary["resumed_from"] == str(last)
    assert summary["steps"] == 12 and summary["extras"]["steps_this_run"] == 12 - resumed_step
    assert summary["extras"]["world_size"] == 2
    assert _heldout_loss_of(out, corpus_shards) < 20


@pytest.mark.timeout(300)
def test_stopping_the_launching_process_stops_everything_it_started(tiny_model, corpus_shards,
                                                                    tmp_path: Path) -> None:
    # Quiet ranks (no eval, no logging): nothing they print can fail on a closed pipe and end
    # them by accident, so only the parent's own cleanup can stop them in time.
    cfg = _config(tiny_model, corpus_shards, tmp_path / "run", max_steps=10_000, heldout_files=[],
                  log_every=10_000, eval_every=10_000)
    node = Node(cfg, None, tmp_path / "node", gpus=1)
    try:
        runner = node.launcher()
        deadline = time.monotonic() + 120
        ranks: list[psutil.Process] = []
        while not ranks:
            tree = runner.children(recursive=True)
            ranks = [p for p in tree if "trainer.finetune" in " ".join(p.cmdline())
                     and "deepspeed" not in " ".join(p.cmdline())]
            assert time.monotonic() < deadline, "the launcher never started a rank"
            time.sleep(0.05)  # waiting for a process to appear: there is nothing to block on
        started = [runner, *runner.children(recursive=True)]
        node.proc.send_signal(signal.SIGTERM)  # stop the parent only, as a supervisor would
        assert node.proc.wait(timeout=60) == -signal.SIGTERM
        gone, alive = psutil.wait_procs(started, timeout=5)
        assert not alive, f"still running after the parent stopped: {[p.cmdline() for p in alive]}"
    finally:
        node.stop()


def test_node_settings_are_checked_together_and_mapped_to_no_ssh_flags(tmp_path: Path) -> None:
    cfg = FinetuneConfig(base="x", train_files=["t.jsonl.zst"], heldout_files=[], output_dir=str(tmp_path),
                         num_nodes=2, node_rank=2, dist_timeout_s=0)
    with pytest.raises(FinetuneError) as caught:
        launch(cfg, log_path=tmp_path / "log", include="localhost:0")
    message = str(caught.value)
    for needle in ("node_rank=2: must be in 0..1", "master_addr is required", "dist_timeout_s=0",
                   "include cannot be combined with node_rank"):
        assert needle in message, message
    no_host = FinetuneConfig(base="x", train_files=["t"], heldout_files=[], output_dir=str(tmp_path), num_nodes=2)
    with pytest.raises(FinetuneError, match="needs either a hostfile .* or node_rank"):
        launch(no_host, gpus=1, log_path=tmp_path / "log")

    cmd = build_launch_command("c.json", gpus=1, hostfile="h", num_nodes=2, node_rank=1,
                               master_addr="10.0.0.1", master_port=29600)
    flags = " ".join(cmd)
    assert "--hostfile h --num_nodes 2 --num_gpus 1 --no_ssh --node_rank 1" in flags
    assert "--master_addr 10.0.0.1 --master_port 29600" in flags
