"""Benchmark: convert a CodeGen-350M-multi-shaped model to FasterTransformer for 1 and 2 GPUs.

    .venv/bin/python benchmarks/convert_bench.py            # full size (n_embd 1024, 20 layers)
    .venv/bin/python benchmarks/convert_bench.py --quick    # small shape, seconds
    .venv/bin/python benchmarks/convert_bench.py --verify   # also time the NumPy verification

The model is random (same tensor names and shapes as Salesforce/codegen-350M-multi, saved as
safetensors). Each conversion runs in a child process so its peak RSS (ru_maxrss, including
the interpreter and torch) is its own. Targets: under 30 s and peak RSS under 2× the fp32
model size per conversion.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32, vocab_size=51200, n_positions=2048)
QUICK = dict(n_embd=256, n_layer=4, n_head=8, rotary_dim=16, vocab_size=8192, n_positions=512)


def make_model(out: Path, shape: dict) -> int:
    """Write a random CodeGen of ``shape`` (safetensors + a small tokenizer); returns bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import CodeGenConfig, CodeGenForCausalLM

    from trainer import sample_code
    from trainer.tiny import train_tokenizer

    src_dir = out.parent / "sample-src"
    files = sample_code.generate(src_dir, files=40, seed=0)
    tok = train_tokenizer((p.read_text() for p in files), 1024)
    eos = tok.eos_token_id
    cfg = CodeGenConfig(**shape, n_ctx=shape["n_positions"], bos_token_id=eos, eos_token_id=eos,
                        tie_word_embeddings=False)
    with torch.device("meta"):
        meta = CodeGenForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, param in meta.named_parameters():
        tensors[name] = (torch.randn(param.shape, generator=gen) * 0.02).contiguous()
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(t.numel() * 4 for t in tensors.values())


def child(src: str, out: str, gpus: int, verify: bool) -> None:
    """Run one conversion and print its figures as JSON (runs in a fresh process)."""
    from converter import convert

    started = time.perf_counter()
    result = convert(src, out, to="fastertransformer", gpus=gpus, verify=verify)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"gpus": gpus, "wall_s": wall, "peak_rss_bytes": peak,
                      "verify": result.verify}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model instead of 350M shape")
    parser.add_argument("--verify", action="store_true", help="also run verification (timed)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=3, metavar=("SRC", "OUT", "GPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.verify)
        return

    shape = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="convert-bench-"))
    try:
        t0 = time.perf_counter()
        model_bytes = make_model(work / "codegen", shape)
        print(f"model: {shape}  fp32 size {model_bytes / 2**30:.2f} GiB "
              f"(built in {time.perf_counter() - t0:.1f}s)")
        for gpus in args.gpus:
            out = work / f"art-{gpus}"
            cmd = [sys.executable, __file__, "--child", str(work / "codegen"), str(out), str(gpus)]
            if args.verify:
                cmd.append("--verify")
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"conversion for {gpus} GPU(s) failed")
            fig = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = fig["peak_rss_bytes"] / model_bytes
            line = (f"{gpus}-gpu: wall {fig['wall_s']:.1f} s  peak RSS "
                    f"{fig['peak_rss_bytes'] / 2**30:.2f} GiB ({ratio:.2f}× model)  "
                    f"targets: <30 s {'OK' if fig['wall_s'] < 30 else 'MISS'}, "
                    f"<2× {'OK' if ratio < 2 else 'MISS'}")
            if fig["verify"]:
                line += f"  verify max|Δ| {max(fig['verify']['max_abs_diff']):.2e}"
            print(line, flush=True)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
