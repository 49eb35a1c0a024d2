"""Training throughput: RepoTune's pipeline versus the original recipe, same model and data.

The original recipe (run_clm.py): load a JSONL file with ``datasets``, tokenise with ``map``,
``group_texts`` per 1000-document batch, plain ``Trainer``. RepoTune: read the zstd shards,
tokenise through the checksum-keyed cache, pack once, ``trainer.finetune.train``.

Both train the tiny CodeGen for the same number of steps with the same batch, block size and
learning rate, on CPU, in this process, one after the other. Reported:

* end-to-end tokens/s = training tokens / (data preparation + training wall time), for
  RepoTune with a cold cache (first run) and a warm cache (a retrain after a push);
* training-loop tokens/s; the ratio RepoTune / recipe (target ≥ 1.0);
* tokenisation throughput (tokens/s: reading the file, tokenising, and for RepoTune hashing
  the shard and writing the cache) of both, and of RepoTune with 2 processes.

The recipe runs twice (before and after RepoTune) and its faster run counts. Both sides run
the same model through the same ``Trainer``, so the training-loop ratio should be about 1.0;
on a shared machine it moves with load (repeat runs to see the spread). The structural gains
are in data preparation: the cache (warm) and packing once instead of per 1000 documents.

Run: ``.venv/bin/python benchmarks/train_bench.py`` (``--quick`` for a small run,
``--deepspeed zero2`` to put RepoTune's side on a ZeRO-2 engine).

``--multinode`` runs only the network-path comparison instead: the same ZeRO-2 run through
DeepSpeed's launcher as one node with two CPU ranks (``--num_gpus 2``) and as two no-ssh
"nodes" with one rank each meeting at 127.0.0.1 (``--num_nodes 2 --node_rank R``), side by
side. Both have world size 2 and the same data and seed, so the difference is the launch and
rendezvous path; on one machine both talk over loopback gloo, so this measures overhead,
not a real network.

``--lora`` runs only the method comparison instead: full fine-tuning (plain Trainer, no DeepSpeed)
against a LoRA adapter (``method="lora"``, rank 16, attention + MLP targets) on the same tiny
CodeGen, data, steps and learning rate, warm tokenisation cache, each run twice alternately (the
faster run counts). Printed side by side: training-loop tokens/s, trainable parameters, bytes
written (checkpoint vs adapter weights) and the final held-out loss. (No memory column: both
methods run in this one process, whose peak RSS only grows.) ``--n-embd 256``
widens the tiny model, where LoRA's smaller backward and optimizer state start to show.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Launched ranks must import this checkout too, not whatever copy is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)


def write_data(root: Path, files: int, shards: int) -> tuple[list[Path], list[Path], Path]:
    """Sample code as zstd shards (RepoTune's input) and one plain JSONL (the recipe's input)."""
    import zstandard

    from trainer import sample_code

    paths = sorted(sample_code.generate(root / "src", files=files, seed=11))
    records = [{"text": p.read_text(), "path": p.relative_to(root / "src").as_posix(), "repo": "acme/internal",
                "lang": p.suffix.lstrip("."), "sha": hashlib.sha1(p.read_bytes()).hexdigest()} for p in paths]
    heldout = records[::20]
    train = [r for i, r in enumerate(records) if i % 20]
    out = root / "shards"
    out.mkdir(parents=True)

    def shard(path: Path, recs: list[dict]) -> Path:
        path.write_bytes(zstandard.ZstdCompressor().compress(
            "".join(json.dumps(r) + "\n" for r in recs).encode()))
        return path

    train_paths = [shard(out / f"train-{k:02d}.jsonl.zst", train[k::shards]) for k in range(shards)]
    heldout_paths = [shard(out / "heldout-00.jsonl.zst", heldout)]
    jsonl = root / "train.json"  # the recipe's {"text", ...} JSON Lines file
    jsonl.write_text("".join(json.dumps({"text": r["text"], "url": r["path"]}) + "\n" for r in train))
    return train_paths, heldout_paths, jsonl


def recipe(model: Path, jsonl: Path, out: Path, block: int, steps: int, batch: int, lr: float) -> dict:
    """The original recipe's data path and a plain Trainer (run_clm.py, condensed)."""
    from itertools import chain

    import datasets
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    tok_start = time.perf_counter()
    raw = datasets.load_dataset("json", data_files={"train": str(jsonl)}, cache_dir=str(out / "hf"))
    tokenized = raw.map(lambda ex: tokenizer(ex["text"]), batched=True, remove_columns=["text", "url"])
    tok_seconds = time.perf_counter() - tok_start

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        result = {k: [t[i: i + block] for i in range(0, total, block)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True)
    prep_seconds = time.perf_counter() - started
    args = TrainingArguments(output_dir=str(out / "ckpt"), per_device_train_batch_size=batch, learning_rate=lr,
                             max_steps=steps, use_cpu=True, report_to="none", disable_tqdm=True,
                             save_strategy="no", logging_steps=max(1, steps // 4), seed=42)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model), args=args, train_dataset=lm["train"],
                      data_collator=default_data_collator)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trainer.save_model(str(out / "final"))
    tokens = steps * batch * block
    n_tok = sum(len(x) for x in tokenized["train"]["input_ids"])
    return {"prep_s": prep_seconds, "train_s": train_seconds, "total_s": time.perf_counter() - started,
            "tokens": tokens, "tokenize_tokens_per_s": n_tok / tok_seconds, "blocks": len(lm["train"])}


def repotune(model: Path, train_files, heldout_files, out: Path, cache: Path, block: int, steps: int,
             batch: int, lr: float, deepspeed: str) -> dict:
    from trainer.finetune import FinetuneConfig, train

    cfg = FinetuneConfig(base=str(model), train_files=[str(p) for p in train_files],
                         heldout_files=[str(p) for p in heldout_files], output_dir=str(out), block_size=block,
                         max_steps=steps, per_device_batch=batch, learning_rate=lr, deepspeed=deepspeed,
                         eval_every=10_000, save_every=10_000, log_every=max(1, steps // 4),
                         cache_dir=str(cache))
    result = train(cfg)
    extras = result.extras
    return {"prep_s": extras["data"]["seconds"], "train_s": extras["train_seconds"],
            "total_s": result.wall_time_s, "tokens": result.tokens, "blocks": extras["data"]["train_blocks"],
            "retokenized": len(extras["data"]["retokenized"])}


def tokenize_throughput(model: Path, files, cache: Path, num_proc: int) -> float:
    from transformers import AutoTokenizer

    from trainer.data import tokenize_shards

    tokenizer = AutoTokenizer.from_pretrained(model)
    start = time.perf_counter()
    shards = tokenize_shards(files, tokenizer, cache, num_proc=num_proc)
    return sum(s.tokens for s in shards) / (time.perf_counter() - start)


def launched(cfg, gpus: int, log: Path, nodes: int) -> dict:
    """One launcher run (``nodes`` == 1) or ``nodes`` no-ssh node launchers at once, in threads."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from trainer.launch import free_port, launch

    env = {"DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "lo"}
    started = time.perf_counter()
    if nodes == 1:
        result = launch(cfg, gpus=gpus, log_path=log, env=env)
    else:
        port = free_port()
        node_cfgs = [replace(cfg, num_nodes=nodes, node_rank=r, master_addr="127.0.0.1", master_port=port)
                     for r in range(nodes)]
        with ThreadPoolExecutor(nodes) as pool:
            results = list(pool.map(lambda c: launch(c, gpus=gpus, env=env,
                                                     log_path=log.with_name(f"{log.stem}-{c.node_rank}.log")),
                                    node_cfgs))
        result = results[0]
    wall = time.perf_counter() - started
    return {"world_size": result.extras["world_size"], "num_nodes": result.extras["num_nodes"],
            "tokens": result.tokens, "wall_s": round(wall, 2), "train_s": result.extras["train_seconds"],
            "train_loop_tokens_per_s": round(result.tokens_per_s),
            "end_to_end_tokens_per_s": round(result.tokens / wall), "heldout_loss": result.heldout_loss}


def multinode(quick: bool) -> None:
    """One node × two ranks against two nodes × one rank, same data, seed and world size."""
    from trainer.finetune import FinetuneConfig
    from trainer.tiny import init_tiny

    files, steps = (200, 12) if quick else (600, 40)
    with tempfile.TemporaryDirectory(prefix="train-bench-mn-") as tmp:
        root = Path(tmp)
        train_files, heldout_files, _ = write_data(root / "data", files, shards=4)
        from trainer import sample_code

        model = init_tiny((p.read_text() for p in sample_code.generate(root / "tok-src", files=80, seed=1)),
                          root / "model")

        def cfg(name: str) -> FinetuneConfig:
            return FinetuneConfig(base=str(model), train_files=[str(p) for p in train_files],
                                  heldout_files=[str(p) for p in heldout_files], output_dir=str(root / name),
                                  block_size=256, max_steps=steps, per_device_batch=4, learning_rate=3e-3,
                                  deepspeed="zero2", eval_every=10_000, save_every=10_000,
                                  log_every=max(1, steps // 4), cache_dir=str(root / "cache"))

        # Warm the tokenisation cache and DeepSpeed's op build so neither side pays for them.
        launched(cfg("warmup"), 2, root / "warmup.log", nodes=1)
        one = launched(cfg("one-node"), 2, root / "one.log", nodes=1)
        two = launched(cfg("two-nodes"), 1, root / "two.log", nodes=2)
    figures = {"setup": {"files": files, "steps": steps, "block_size": 256, "batch_per_rank": 4,
                         "deepspeed": "zero2", "cpus": os.cpu_count()},
               "one_node_two_ranks": one, "two_nodes_one_rank_each": two,
               "ratio_train_loop": round(two["train_loop_tokens_per_s"] / one["train_loop_tokens_per_s"], 3),
               "ratio_end_to_end": round(two["end_to_end_tokens_per_s"] / one["end_to_end_tokens_per_s"], 3)}
    print(json.dumps(figures, indent=2))
    print(f"\ntokens/s  one node x 2 ranks: {one['train_loop_tokens_per_s']:,} (loop) "
          f"{one['end_to_end_tokens_per_s']:,} (end to end)   two nodes x 1 rank: "
          f"{two['train_loop_tokens_per_s']:,} (loop) {two['end_to_end_tokens_per_s']:,} (end to end)   "
          f"ratio two/one: {figures['ratio_train_loop']:.3f} loop, {figures['ratio_end_to_end']:.3f} end to end")


def method_run(cfg) -> dict:
    """One training run of either method: throughput, size on disk, trainable share, loss."""
    from trainer.finetune import train

    result = train(cfg)
    out = Path(cfg.output_dir)
    weights = "adapter_model.safetensors" if cfg.method == "lora" else "model.safetensors"
    lora = result.extras.get("lora") or {}
    return {"train_loop_tokens_per_s": round(result.tokens_per_s), "train_s": result.extras["train_seconds"],
            "weights_bytes": (out / weights).stat().st_size, "trainable_params": lora.get("trainable_params"),
            "heldout_loss": result.heldout_loss}


def lora_vs_full(quick: bool, n_embd: int) -> None:
    """Full fine-tuning and LoRA side by side on the same tiny model and data."""
    from dataclasses import replace

    from trainer import sample_code
    from trainer.finetune import FinetuneConfig
    from trainer.tiny import TinyModelConfig, init_tiny

    files, steps = (200, 15) if quick else (800, 60)
    with tempfile.TemporaryDirectory(prefix="train-bench-lora-") as tmp:
        root = Path(tmp)
        train_files, heldout_files, _ = write_data(root / "data", files, shards=4)
        src = sample_code.generate(root / "tok-src", files=80, seed=1)
        model = init_tiny((p.read_text() for p in src), root / "model",
                          TinyModelConfig(n_embd=n_embd, rotary_dim=min(8, n_embd // 4)))
        base = FinetuneConfig(base=str(model), train_files=[str(p) for p in train_files],
                              heldout_files=[str(p) for p in heldout_files], output_dir="", block_size=256,
                              max_steps=steps, per_device_batch=4, learning_rate=3e-3, deepspeed="none",
                              eval_every=10_000, save_every=10_000, log_every=max(1, steps // 4),
                              cache_dir=str(root / "cache"), use_cpu=True)
        runs: dict[str, list[dict]] = {"full": [], "lora": []}
        for attempt in range(2):
            for method in ("full", "lora"):
                cfg = replace(base, method=method, output_dir=str(root / f"{method}-{attempt}"))
                runs[method].append(method_run(cfg))
    best = {m: max(r, key=lambda x: x["train_loop_tokens_per_s"]) for m, r in runs.items()}
    figures = {"setup": {"files": files, "steps": steps, "block_size": 256, "batch": 4, "n_embd": n_embd,
                         "lora_r": 16, "lora_alpha": 32, "cpus": os.cpu_count()},
               **best, "ratio_lora_over_full_tokens_per_s": round(
                   best["lora"]["train_loop_tokens_per_s"] / best["full"]["train_loop_tokens_per_s"], 3)}
    print(json.dumps(figures, indent=2))
    print(f"\n{'':24}{'full':>14}{'lora':>14}")
    for key in ("train_loop_tokens_per_s", "trainable_params", "weights_bytes", "heldout_loss"):
        row = [best["full"][key], best["lora"][key]]
        print(f"{key:24}" + "".join(f"{'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else f'{v:,}'):>14}"
                                    for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpus and few steps")
    parser.add_argument("--deepspeed", default="none", help="RepoTune side: none, zero2, zero2-offload …")
    parser.add_argument("--multinode", action="store_true",
                        help="only compare one node x 2 ranks with two no-ssh nodes x 1 rank (launcher, CPU)")
    parser.add_argument("--lora", action="store_true",
                        help="only compare full fine-tuning with a LoRA adapter (tokens/s, size, loss)")
    parser.add_argument("--n-embd", type=int, default=64, help="width of the tiny model (--lora)")
    args = parser.parse_args()
    if args.lora:
        lora_vs_full(args.quick, args.n_embd)
        return
    if args.multinode:
        multinode(args.quick)
        return
    files, steps = (200, 15) if args.quick else (1500, 60)
    block, batch, lr = 256, 4, 3e-3

    from trainer import sample_code
    from trainer.tiny import init_tiny

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        root = Path(tmp)
        train_files, heldout_files, jsonl = write_data(root / "data", files, shards=8)
        src = sample_code.generate(root / "tok-src", files=80, seed=1)
        model = init_tiny((p.read_text() for p in src), root / "model")

        # The recipe runs before and after RepoTune and keeps its faster run, so warm-up and
        # machine load cannot flatter RepoTune.
        rec_a = recipe(model, jsonl, root / "recipe-a", block, steps, batch, lr)
        # Same work on both sides: the recipe trains on the train split only (run_clm.py
        # --do_train, no evaluation), so RepoTune gets no held-out files here either.
        cold = repotune(model, train_files, [], root / "rt-cold", root / "cache", block, steps, batch,
                        lr, args.deepspeed)
        warm = repotune(model, train_files, [], root / "rt-warm", root / "cache", block, steps, batch,
                        lr, args.deepspeed)
        rec_b = recipe(model, jsonl, root / "recipe-b", block, steps, batch, lr)
        rec = min(rec_a, rec_b, key=lambda r: r["total_s"])
        tok1 = tokenize_throughput(model, train_files, root / "tok1", 1)
        tok2 = tokenize_throughput(model, train_files, root / "tok2", 2)

    def rate(r: dict, key: str) -> float:
        return r["tokens"] / r[key]

    figures = {
        "setup": {"files": files, "steps": steps, "block_size": block, "batch": batch,
                  "repotune_deepspeed": args.deepspeed, "cpus": os.cpu_count()},
        "recipe": {k: round(v, 3) for k, v in rec.items()},
        "repotune_cold": {k: round(v, 3) for k, v in cold.items()},
        "repotune_warm": {k: round(v, 3) for k, v in warm.items()},
        "end_to_end_tokens_per_s": {"recipe": round(rate(rec, "total_s")),
                                    "repotune_cold": round(rate(cold, "total_s")),
                                    "repotune_warm": round(rate(warm, "total_s"))},
        "train_loop_tokens_per_s": {"recipe": round(rate(rec, "train_s")),
                                    "repotune": round(rate(warm, "train_s"))},
        "ratio_end_to_end_cold": round(rate(cold, "total_s") / rate(rec, "total_s"), 3),
        "ratio_end_to_end_warm": round(rate(warm, "total_s") / rate(rec, "total_s"), 3),
        "ratio_train_loop": round(rate(warm, "train_s") / rate(rec, "train_s"), 3),
        "tokenize_tokens_per_s": {"recipe_map": round(rec["tokenize_tokens_per_s"]),
                                  "repotune_1proc": round(tok1), "repotune_2proc": round(tok2)},
    }
    print(json.dumps(figures, indent=2))
    print(f"\nratio (RepoTune / recipe, end-to-end, cold cache): {figures['ratio_end_to_end_cold']:.3f}  "
          f"warm cache: {figures['ratio_end_to_end_warm']:.3f}  training loop: {figures['ratio_train_loop']:.3f}"
          "  (target >= 1.0; the training-loop figure is the same Trainer on both sides and varies with "
          "machine load)")


if __name__ == "__main__":
    main()
