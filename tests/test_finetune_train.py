"""Real training on CPU: DeepSpeed ZeRO-2 in process, two ranks through the launcher, resume
after a kill, and the embedding-row rules. The first test compiles DeepSpeed's shared-memory
comm op into TORCH_EXTENSIONS_DIR (~25 s cold); the resume test builds cpu_adam (~50 s cold)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.base import free_port
from tests.fixtures.training import Shards
from trainer.errors import TokenOutOfRange
from trainer.finetune import FinetuneConfig, last_complete_checkpoint, launch, train


def _config(model: Path, shards: Shards, out: Path, **overrides) -> FinetuneConfig:
    values = dict(base=str(model), train_files=[str(p) for p in shards.train],
                  heldout_files=[str(p) for p in shards.heldout], output_dir=str(out),
                  learning_rate=3e-3, per_device_batch=4, max_steps=20, eval_every=10,
                  save_every=10, log_every=5, deepspeed="zero2")
    values.update(overrides)
    return FinetuneConfig(**values)


def _assert_loadable(checkpoint: Path, corpus_text: str = "def load_invoice(client") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (checkpoint / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tok(corpus_text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == model.get_input_embeddings().num_embeddings
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_zero2_engine_trains_the_tiny_model_and_heldout_loss_falls(tiny_model_copy, corpus_shards,
                                                                  tmp_path: Path) -> None:
    events: list[dict] = []
    cfg = _config(tiny_model_copy, corpus_shards, tmp_path / "run")
    result = train(cfg, progress=events.append)

    assert result.steps == 20 and result.resumed_from is None
    assert result.extras["deepspeed"] == "zero2" and result.extras["block_size"] == 256
    steps = [step for step, _ in result.heldout_curve]
    assert steps == [0, 10, 20]
    first, last = result.heldout_curve[0][1], result.heldout_curve[-1][1]
    assert last < first - 1.0, result.heldout_curve
    assert result.tokens == 20 * 4 * 256
    assert result.tokens_per_s > 0 and result.peak_memory_bytes > 50 * 2**20

    train_events = [e for e in events if e["stage"] == "train" and "loss" in e]
    assert [e["done"] for e in train_events] == [5, 10, 15, 20]
    assert all(e["total"] == 20 and e["tokens_per_s"] > 0 for e in train_events)
    assert any(e["stage"] == "tokenize" for e in events)

    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    for key in ("steps", "tokens", "loss_curve", "heldout_curve", "wall_time_s", "tokens_per_s",
                "peak_memory_bytes", "resumed_from"):
        assert key in summary
    assert summary["loss_curve"][-1][0] == 20
    _assert_loadable(result.checkpoint)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_launcher_run_saves_a_loadable_checkpoint(tiny_model, corpus_shards, tmp_path: Path) -> None:
    events: list[dict] = []
    log = tmp_path / "logs" / "train.log"
    cfg = _config(tiny_model, corpus_shards, tmp_path / "run", max_steps=10, eval_every=5, save_every=100)
    port = free_port()
    result = launch(cfg, gpus=2, log_path=log, env={"DS_ACCELERATOR": "cpu", "NCCL_DEBUG": "INFO"},
                    progress=events.append, timeout_s=240, master_port=port)
    # DeepSpeed's CPU all-reduce buffers (~66 MB per rank) must not outlive the run.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))

    assert result.extras["world_size"] == 2
    assert result.steps == 10 and result.tokens == 10 * 4 * 2 * 256
    assert result.heldout_curve[-1][1] < result.heldout_curve[0][1]
    assert [e["done"] for e in events if "loss" in e] == [5, 10]  # parsed from the streamed log
    text = log.read_text()
    assert "deepspeed.launcher.runner" in text and "--num_gpus 2" in text
    assert text.count("REPOTUNE_PROGRESS") == len(events)
    _assert_loadable(result.checkpoint)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_run_resumes_from_its_last_checkpoint(tiny_model, corpus_shards, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # The original recipe's config: ZeRO-2 with the optimizer offloaded to CPU (builds cpu_adam).
    cfg = _config(tiny_model, corpus_shards, out, deepspeed="zero2-offload", max_steps=16,
                  save_every=4, eval_every=8, per_device_batch=2)
    out.mkdir(parents=True)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.finetune", "--config", str(config_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while last_complete_checkpoint(out / "checkpoints") is None:
            assert proc.poll() is None, f"training exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "no checkpoint appeared within 300 s"
            time.sleep(0.1)  # polling the filesystem for a finished save
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not (out / "train.json").exists(), "the run was killed before it finished"
    killed_at = last_complete_checkpoint(out / "checkpoints")
    resumed_step = int(killed_at.name.split("-")[1])
    assert 0 < resumed_step < 16

    result = train(cfg)
    assert result.resumed_from == str(killed_at)
    assert result.steps == 16
    assert result.extras["steps_this_run"] == 16 - resumed_step
    assert json.loads((out / "train.json").read_text())["resumed_from"] == str(killed_at)
    _assert_loadable(result.checkpoint)


@pytest.mark.timeout(120)
def test_embeddings_grow_for_a_larger_tokenizer_and_never_shrink(tiny_model, corpus_shards,
                                                                 tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    # A base model with fewer embedding rows than its tokenizer has tokens.
    small = tmp_path / "small"
    config = AutoConfig.from_pretrained(tiny_model)
    config.vocab_size = 300
    AutoModelForCausalLM.from_config(config).save_pretrained(small)
    tokenizer.save_pretrained(small)

    strict = _config(small, corpus_shards, tmp_path / "strict", deepspeed="none", max_steps=2,
                     resize_embeddings=False)
    with pytest.raises(TokenOutOfRange, match="only 300 embedding rows"):
        train(strict)

    grown = train(_config(small, corpus_shards, tmp_path / "grown", deepspeed="none", max_steps=2))
    expected = -(-len(tokenizer) // 64) * 64
    assert grown.extras["embedding"] == {"rows": expected, "tokenizer_len": len(tokenizer),
                                         "resized_from": 300}
    assert AutoConfig.from_pretrained(grown.checkpoint).vocab_size == expected

    # A model with more rows than the tokenizer (CodeGen-350M: 51200 rows, 50295 tokens) keeps them.
    wide = tmp_path / "wide"
    config.vocab_size = len(tokenizer) + 100
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    kept = train(_config(wide, corpus_shards, tmp_path / "kept", deepspeed="none", max_steps=2))
    assert kept.extras["embedding"]["rows"] == len(tokenizer) + 100
    assert kept.extras["embedding"]["resized_from"] is None
    assert AutoConfig.from_pretrained(kept.checkpoint).vocab_size == len(tokenizer) + 100
