"""Benchmark: held-out completion evaluation throughput of the tiny CodeGen and a tiny StarCoder2 on FIM tasks.

    .venv/bin/python benchmarks/eval_bench.py             # 500 tasks (target: under 60 s on 2 cores)
    .venv/bin/python benchmarks/eval_bench.py --quick     # 100 tasks
    .venv/bin/python benchmarks/eval_bench.py --threads 2 --batch-size 32

Builds the tiny model (tokenizer trained on sample code, random weights), then scores it on
tasks cut from 80 held-out sample files. A random model is the slow case: it rarely emits a
newline, so most sequences run to their token cap. A second pass scores a copy fine-tuned for
100 steps, which stops at line ends like a real model. Prints tasks/s for generation and the
wall time of the whole ``score_model`` (task building, generation, held-out loss).

The FIM pass scores an untrained tiny StarCoder2 on as many fill-in-the-middle tasks (its
family's default kinds: the family's FIM prompt, stopping on its sentinels); ``--no-fim``
skips it. Target for each pass: under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _records(root: Path, files: int, seed: int) -> list[dict]:
    from trainer import sample_code

    langs = {".py": "python", ".js": "javascript", ".go": "go", ".md": "markdown"}
    paths = sample_code.generate(root, files=files, seed=seed)
    return [{"text": p.read_text(), "path": p.relative_to(root).as_posix(), "repo": "bench",
             "lang": langs.get(p.suffix, "text"), "sha": ""} for p in sorted(paths)]


def _finetune(src: Path, out: Path, steps: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import sample_code

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids: list[int] = []
    for path in sample_code.generate(out.parent / "ft-src", files=60, seed=3):
        ids += tok(path.read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    data, gen = torch.tensor(ids), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 129, (8,), generator=gen).tolist()
        x = torch.stack([data[s:s + 128] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 tasks instead of 500")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-fim", action="store_true", help="skip the StarCoder2 FIM pass")
    args = parser.parse_args()
    n = args.tasks or (100 if args.quick else 500)

    import torch

    from trainer import sample_code
    from trainer.evaluate import EvalConfig, score_model
    from trainer.evaluate.compare import cpu_threads
    from trainer.tiny import init_tiny

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = sample_code.generate(root / "train", files=80, seed=1)
        base = init_tiny((p.read_text() for p in files), root / "tiny")
        fim = None if args.no_fim else init_tiny((p.read_text() for p in files), root / "fim", family="starcoder2")
        with cpu_threads(args.threads):
            tuned = _finetune(base, root / "tuned", steps=100)
        records = _records(root / "heldout", files=80, seed=7)
        cfg = EvalConfig(num_tasks=n, device="cpu", num_threads=args.threads, batch_size=args.batch_size)
        print(f"eval bench: {n} tasks, batch {args.batch_size}, torch threads {args.threads} "
              f"(machine: {torch.get_num_threads()} default threads)")
        worst = 0.0
        runs = [("untrained tiny", base), ("fine-tuned tiny", tuned)] + ([("FIM starcoder2", fim)] if fim else [])
        for label, model in runs:
            events: list[dict] = []
            start = time.perf_counter()
            scores = score_model(model, records, cfg, corpus_version="bench", progress=events.append)
            total = time.perf_counter() - start
            worst = max(worst, total)
            o = scores.overall
            gen_s = len(scores.rows) / o["tasks_per_s"]
            print(f"  {label:16s} tasks={len(scores.rows)}  generate {gen_s:6.2f} s = {o['tasks_per_s']:7.1f} tasks/s"
                  f"  | mean latency {o['latency_ms']:6.1f} ms, p95 {o['latency_p95_ms']:6.1f} ms"
                  f"  | loss over {o['loss_tokens']} tokens  | score_model total {total:6.2f} s"
                  f"  | edit sim {o['edit_similarity']:.3f}  | kinds {','.join(scores.per_kind)}")
        print(f"target: {n} tasks under 60 s -> {'OK' if worst < 60 else 'TOO SLOW'} (slowest {worst:.1f} s)")


if __name__ == "__main__":
    main()
