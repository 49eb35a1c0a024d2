"""GPU check: the figures one GPU machine should give, through RepoTune's own code paths.

Four measurements, each printed as one ``GPU-CHECK <figure> key=value ...`` line:

* ``full_zero2``: full fine-tuning of a CodeGen-350M-shaped model with the shipped ``zero2``
  DeepSpeed config (``trainer.finetune.train``): tokens/s and model FLOPs utilisation (MFU);
* ``lora``: LoRA training of a Qwen2-1.5B-shaped model (``FinetuneConfig(method="lora")``):
  tokens/s and peak GPU memory;
* ``serving_c1`` / ``serving_c8``: greedy completions from Triton's python backend (the artifact
  ``converter.convert`` makes, published and activated by ``serving.ModelRepository`` on the
  embedded Triton), p50/p99 latency at concurrency 1 and 8;
* ``ft_convert``: CodeGen → GPT-J → FasterTransformer conversion time, verification included.

No weights are downloaded: each model is built from a ``transformers`` config of the real shape
with random weights, and a BPE tokenizer is trained on generated code (``trainer.tiny``). Rows of
the output layer past the tokenizer's length get a large negative bias, so greedy decoding stays
inside the tokenizer (the serving smoke test checks it); the shapes are unchanged.

``--smoke`` runs the same code on CPU with tiny shapes (CI runs it so the script cannot rot).
Run on a GPU machine: ``bash benchmarks/gpu_check.sh`` (see docs/gpu-plan.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's compiled ops are cached where the test suite caches them (one build per checkout).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts) by GPU name fragment; a GPU not
listed is measured against a timed bf16 matmul instead."""


@dataclass(frozen=True)
class Plan:
    """Shapes and run lengths of one mode (``gpu`` or ``smoke``)."""

    codegen: dict
    qwen2: dict
    block: int
    full_steps: int
    full_batch: int
    lora_steps: int
    lora_batch: int
    requests: int
    max_tokens: int
    files: int


GPU = Plan(
    codegen=dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32, n_positions=2048, vocab_size=51200),
    qwen2=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
               num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
               rms_norm_eps=1e-6, tie_word_embeddings=True),
    block=2048, full_steps=20, full_batch=4, lora_steps=20, lora_batch=2, requests=16, max_tokens=16,
    files=400)
"""The real shapes: Salesforce/codegen-350M-multi and Qwen2(.5-Coder)-1.5B config.json values."""

SMOKE = Plan(
    codegen=dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, vocab_size=None),
    qwen2=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, vocab_size=None, tie_word_embeddings=True),
    block=128, full_steps=3, full_batch=2, lora_steps=3, lora_batch=2, requests=4, max_tokens=4, files=40)
"""Tiny shapes; ``vocab_size=None``: the tokenizer's length plus 64 padding rows."""


_CLOCK = {"last": time.perf_counter()}


def emit(figure: str, **values) -> None:
    """One figure line; numbers with a few significant digits. ``step_s``: wall time since the
    previous line (model building included), to see where the 8-minute budget goes."""
    now = time.perf_counter()
    values["step_s"] = round(now - _CLOCK["last"], 1)
    _CLOCK["last"] = now
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    print(f"GPU-CHECK {figure} " + " ".join(parts), flush=True)


# ----------------------------------------------------------------------------- inputs

def write_shards(work: Path, files: int) -> tuple[list[Path], list[str]]:
    """Generated code as one corpus shard (the zstd JSONL lines ``trainer.corpus`` writes)."""
    import zstandard

    from trainer import sample_code

    paths = sample_code.generate(work / "src", files=files, seed=5)
    texts = [p.read_text() for p in paths]
    lines = (json.dumps({"text": t, "path": p.name, "repo": "gpu-check", "lang": "python", "sha": str(i)})
             for i, (p, t) in enumerate(zip(paths, texts, strict=True)))
    shard = work / "train-00.jsonl.zst"
    shard.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    return [shard], texts


def build_model(family: str, shape: dict, texts: list[str], out: Path, device: str) -> Path:
    """A random-weight checkpoint of ``shape`` with a tokenizer trained on ``texts``."""
    import torch
    import transformers

    from families import get_family
    from trainer.tiny import train_tokenizer

    fam = get_family(family)
    tokenizer = train_tokenizer(texts, 1024, fam.special_tokens)
    eos = tokenizer.convert_tokens_to_ids(fam.eos_token)
    shape = dict(shape, vocab_size=shape["vocab_size"] or len(tokenizer) + 64)
    ids = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if family == "codegen":
        config = transformers.CodeGenConfig(n_ctx=shape["n_positions"], tie_word_embeddings=False, **shape, **ids)
    else:
        config = transformers.Qwen2Config(**shape, **ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:  # CodeGen: keep greedy tokens inside the tokenizer
            head.bias[len(tokenizer):] = -1e4
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = shape.get("n_positions") or shape["max_position_embeddings"]
    tokenizer.save_pretrained(out)
    del model
    _free(device)
    return out


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- training

def finetune_config(base: Path, shards: list[Path], out: Path, plan: Plan, *, method: str, gpu: bool):
    from trainer.finetune import FinetuneConfig

    full = method == "full"
    return FinetuneConfig(
        base=str(base), train_files=[str(p) for p in shards], heldout_files=[], output_dir=str(out),
        block_size=plan.block, max_steps=plan.full_steps if full else plan.lora_steps,
        per_device_batch=plan.full_batch if full else plan.lora_batch, learning_rate=1e-4,
        precision="bf16" if gpu else "fp32", deepspeed="zero2" if full else "none",
        save_every=10_000, eval_every=10_000, log_every=1, use_cpu=not gpu, method=method,
        lora_r=16, lora_alpha=32, cache_dir=str(out.parent / "tokenized"))


def flops_per_token(checkpoint: Path, block: int) -> float:
    """Training FLOPs per token: 6 × matmul parameters + 12 × layers × width × context (attention).

    Matmul parameters are all parameters but the input embedding (a lookup, not a matmul); the
    attention term is the PaLM paper's (Chowdhery et al. 2022, appendix B).
    """
    import math

    from converter._checkpoint import TensorReader

    config = json.loads((checkpoint / "config.json").read_text())
    with TensorReader(checkpoint) as reader:
        sizes = {name: math.prod(reader.shape(name)) for name in reader.keys()}  # noqa: SIM118 (not a dict)
    total = sum(sizes.values())
    embedding = sum(n for name, n in sizes.items() if name.endswith(("wte.weight", "embed_tokens.weight")))
    if config.get("tie_word_embeddings"):
        embedding = 0  # the one matrix is also the output layer's matmul
    layers = config.get("n_layer") or config["num_hidden_layers"]
    width = config.get("n_embd") or config["hidden_size"]
    return 6.0 * (total - embedding) + 12.0 * layers * width * block


def peak_flops(gpu: bool) -> tuple[float, str]:
    """(FLOP/s, source): the datasheet bf16 peak for a known GPU, else a timed matmul here."""
    import torch

    if gpu:
        name = torch.cuda.get_device_name(0)
        for fragment, tflops in PEAK_BF16_TFLOPS.items():
            if fragment in name:
                return tflops * 1e12, f"datasheet-bf16:{fragment}"
    n, dtype, device = (8192, torch.bfloat16, "cuda") if gpu else (512, torch.float32, "cpu")
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    reps = 10 if gpu else 5
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if gpu:
        torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (time.perf_counter() - start), "measured-matmul"


def full_finetune(base: Path, shards: list[Path], work: Path, plan: Plan, gpu: bool) -> None:
    from trainer.finetune import train

    result = train(finetune_config(base, shards, work / "full-run", plan, method="full", gpu=gpu))
    peak, source = peak_flops(gpu)
    achieved = result.tokens_per_s * flops_per_token(base, plan.block)
    emit("full_zero2", model="codegen-350M" if gpu else "codegen-tiny", tokens_per_s=float(result.tokens_per_s),
         mfu=achieved / peak, peak_tflops=peak / 1e12, peak_source=source, steps=result.steps,
         device=result.extras.get("device"))


def lora_finetune(base: Path, shards: list[Path], work: Path, plan: Plan, gpu: bool) -> None:
    from trainer.finetune import train

    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    result = train(finetune_config(base, shards, work / "lora-run", plan, method="lora", gpu=gpu))
    emit("lora", model="qwen2-1.5B" if gpu else "qwen2-tiny", tokens_per_s=float(result.tokens_per_s),
         peak_memory_gib=result.peak_memory_bytes / 2**30, steps=result.steps,
         memory="cuda.max_memory_allocated" if gpu else "process-max-rss")


# ----------------------------------------------------------------------------- serving, conversion

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def backend_device(log_path: Path, version: int) -> str:
    """``device/dtype`` the python backend's instance of ``version`` reported in Triton's log
    (the line ``serving/python_backend/model.py`` prints at initialize), or ``unreported``."""
    import importlib.util

    from serving.repository import PYTHON_MODEL

    spec = importlib.util.spec_from_file_location("repotune_python_backend_model", PYTHON_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports numpy only: triton_python_backend_utils is optional
    prefix = module.DEVICE_LOG_PREFIX
    found = "unreported"
    for line in log_path.read_text(errors="replace").splitlines():
        if prefix in line and f" version={version} " in line:
            fields = dict(f.split("=", 1) for f in line.split(prefix, 1)[1].split() if "=" in f)
            found = f"{fields.get('device')}/{fields.get('dtype')}"
    return found


def serve(base: Path, texts: list[str], work: Path, plan: Plan, gpu: bool) -> None:
    """Publish and activate the python-backend artifact on the embedded Triton; time completions.

    On the GPU machine the artifact's ``config.pbtxt`` asks for a ``KIND_GPU`` instance on GPU 0
    (``python_backend_config(gpus=[0])``), so the backend loads the model there in bf16/fp16;
    ``model_device`` is what the backend itself logged, not what was asked for."""
    import converter
    from converter.triton_config import python_backend_config
    from serving import ModelRepository, TritonClient, TritonServer
    from serving.repository import load_tokenizer

    artifact = converter.convert(base, work / "py-artifact", to="python", model_name="gpucheck",
                                 verify=False).artifact
    if gpu:
        (artifact / "config.pbtxt").write_text(python_backend_config("gpucheck", 8, gpus=[0]), encoding="utf-8")
    root = work / "triton"
    log_path = work / "tritonserver.log"
    os.environ.setdefault("REPOTUNE_TRITON_CPU_THREADS", str(min(8, os.cpu_count() or 1)))
    with TritonServer(root, log_path=log_path) as triton:
        repo = ModelRepository(root, "gpucheck", triton.url)
        version = repo.publish(artifact)
        repo.activate(version)
        tokenizer = load_tokenizer(repo.version_dir(version))
        prompts = [tokenizer(t[:400])["input_ids"][:64] for t in texts[: plan.requests]]
        client = TritonClient(triton.url, "gpucheck", timeout_s=300.0)
        local = threading.local()

        def one(ids: list[int]) -> float:
            if not hasattr(local, "client"):
                local.client = TritonClient(triton.url, "gpucheck", timeout_s=300.0)
            start = time.perf_counter()
            local.client.generate(ids, plan.max_tokens, top_k=1)
            return (time.perf_counter() - start) * 1000

        client.generate(prompts[0], plan.max_tokens, top_k=1)  # warm-up
        device = backend_device(log_path, version)
        for concurrency in (1, 8):
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = list(pool.map(one, (prompts * 2)[: max(plan.requests, 2 * concurrency)]))
            emit(f"serving_c{concurrency}", p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                 requests=len(latencies), max_tokens=plan.max_tokens, model_device=device)


def ft_convert(base: Path, work: Path) -> None:
    import converter

    result = converter.convert(base, work / "ft-artifact", to="fastertransformer", verify=True)
    emit("ft_convert", seconds=float(result.duration_s), verified=bool(result.verify and result.verify["passed"]),
         vocab_size=result.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (CI).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the files here (default: a temp folder).")
    args = parser.parse_args()
    from serving.triton import stop_on_sigterm

    stop_on_sigterm()  # a killed check stops the Triton it started
    if args.smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    gpu = not args.smoke
    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
                 "run with --smoke for the CPU check, or on the GPU machine")
    plan = SMOKE if args.smoke else GPU
    device = "cuda" if gpu else "cpu"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    emit("setup", device=torch.cuda.get_device_name(0) if gpu else "cpu", torch=torch.__version__,
         workdir=str(work))
    shards, texts = write_shards(work, plan.files)
    qwen = build_model("qwen2.5-coder", plan.qwen2, texts, work / "qwen2-base", device)
    lora_finetune(qwen, shards, work, plan, gpu)
    _free(device)
    codegen = build_model("codegen", plan.codegen, texts, work / "codegen-base", "cpu")
    full_finetune(codegen, shards, work, plan, gpu)
    _free(device)
    ft_convert(codegen, work)
    serve(codegen, texts, work, plan, gpu)
    emit("done", seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main()
