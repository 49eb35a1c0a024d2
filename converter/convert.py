"""One call from a fine-tuned Hugging Face checkpoint to a servable artifact.

The python backend serves any family of :data:`families.FAMILIES` that lists it (CodeGen,
StarCoder2, Qwen2.5-Coder, DeepSeek-Coder, CodeLlama, CodeGemma): the checkpoint is copied as
it is. FasterTransformer serves CodeGen only (the GPT-J weight layout); any other family is
refused with a message naming the python backend.

An artifact (docs/architecture.md) is a folder holding ``artifact.json``, ``config.pbtxt``
and the version payload: ``model/`` (Hugging Face checkpoint with tokenizer) for the python
backend, or ``<N>-gpu/`` (FasterTransformer weights + ``config.ini``) and ``tokenizer/`` for
FasterTransformer. It is built in a temporary sibling folder and renamed into place, so a
half-written artifact is never visible under ``out``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from converter._checkpoint import TensorReader, copy_tokenizer, read_config, token_ids, weight_files
from converter.errors import CheckpointError, ConversionError
from converter.triton_config import Schema, fastertransformer_config, python_backend_config
from converter.vllm import VERSION_DIR, VllmOptions
from durable import fsync_dir, fsync_tree, write_json_atomic

Backend = Literal["python", "fastertransformer", "vllm"]
BACKENDS: tuple[str, ...] = ("python", "fastertransformer", "vllm")
VLLM_DTYPE = {"auto": "auto", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""``dtype`` names RepoTune takes → vLLM's ``dtype`` engine argument."""
ProgressFn = Callable[[dict[str, Any]], None]

ARTIFACT_FILE = "artifact.json"
SUPPORTED_MODEL_TYPES = ("codegen",)
"""``model_type`` values the FasterTransformer path converts (CodeGen → GPT-J layout)."""
EMBEDDING_NAMES = ("transformer.wte.weight", "wte.weight", "model.embed_tokens.weight", "embed_tokens.weight")
"""Input-embedding tensor names, CodeGen first, then the Llama-style layout of every other family."""


@dataclass
class ConvertResult:
    """What :func:`convert` produced."""

    artifact: Path
    """The artifact folder (``artifact.json``, ``config.pbtxt``, payload)."""
    backend: str
    """``python`` or ``fastertransformer``."""
    model_name: str
    """Triton model name written into ``config.pbtxt``."""
    vocab_size: int
    """Embedding rows of the converted tensors (the value in every config written)."""
    tensor_parallel: int
    """FasterTransformer ranks (GPUs); 1 for the python backend."""
    dtype: str
    """Inference precision asked for (``fp32`` or ``fp16``)."""
    source: str
    """The checkpoint converted (absolute path)."""
    duration_s: float
    """Wall time of the whole conversion, verification included."""
    verify: dict[str, Any] | None = None
    """:meth:`VerifyReport.as_dict` when verification ran, else ``None``."""
    files: list[str] = field(default_factory=list)
    """Payload files relative to the artifact folder."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["artifact"] = str(self.artifact)
        return data


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: Backend = "python",
    gpus: int = 1,
    dtype: str = "fp32",
    model_name: str = "codegen",
    verify: bool = True,
    progress: ProgressFn | None = None,
    schema: Schema = "v1.1",
    max_batch_size: int | None = None,
    model_mount: str = "/model",
    mp: int | None = None,
    adapters: Sequence[tuple[str, Path]] = (),
    vllm_options: VllmOptions | None = None,
    device: str = "cpu",
) -> ConvertResult:
    """Turn the checkpoint ``src`` into the artifact folder ``out``.

    ``to="python"`` copies the checkpoint (weights, config, tokenizer) of any family the python
    backend serves after checking that its embeddings, config and tokenizer agree; the family
    (detected from ``config.json`` and the vocabulary) is recorded in ``artifact.json``. ``to="fastertransformer"`` converts CodeGen →
    GPT-J → FasterTransformer for ``gpus`` ranks in one streaming pass and, with ``verify``,
    compares an independent NumPy forward pass over the written files with the Hugging Face
    model. ``schema`` picks the FasterTransformer backend's config format (``v1.1`` or
    ``v1.2``); the v1.1 loader reads fp32 files only, so there ``dtype="fp16"`` keeps fp32
    files and sets ``is_half``. ``mp`` overrides the inferred qkv block count.
    ``to="vllm"`` writes a Triton model folder for Triton's vLLM backend (GPU only; see
    :mod:`converter.vllm`): the checkpoint, ``model.json`` engine arguments (``dtype`` also
    ``bf16`` or ``auto``; ``gpus`` is the tensor-parallel size; ``vllm_options`` overrides all
    of them) and, with ``adapters`` (``(name, folder)`` pairs trained on ``src``), the adapters
    and ``multi_lora.json``. ``out`` must not exist or be empty.
    ``device`` places the python backend's instances: ``cpu`` (the embedded server), or ``gpu``
    (one instance on each of GPUs ``0..gpus-1``, in ``dtype``; a Triton without them refuses to
    load the version, so GPU placement is asked for, never guessed).
    """
    started = time.perf_counter()
    src = Path(src).expanduser().resolve()
    out = Path(out).expanduser().absolute()
    _check_request(to, dtype, bool(adapters), out, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if to == "python":
            placement = {"gpus": list(range(gpus)), "dtype": dtype} if device == "gpu" else {}
            meta, report = _to_python(src, staging, model_name=model_name, verify=verify,
                                      max_batch_size=max_batch_size or 8, progress=progress, **placement)
            tp = 1
        elif to == "vllm":
            options = vllm_options or VllmOptions(dtype=VLLM_DTYPE[dtype], tensor_parallel=gpus,
                                                  model_mount=model_mount)
            meta, report, tp = _to_vllm(src, staging, model_name, options, adapters), None, options.tensor_parallel
        else:
            meta, report = _to_fastertransformer(
                src, staging, gpus=gpus, dtype=dtype, model_name=model_name, verify=verify,
                schema=schema, max_batch_size=max_batch_size or 1024, model_mount=model_mount,
                mp=mp, progress=progress)
            tp = gpus
        meta.update(backend=to, model_name=model_name, tensor_parallel=tp, source=str(src),
                    dtype=dtype, verified=bool(report), created=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                              time.gmtime()))
        write_json_atomic(staging / ARTIFACT_FILE, meta)
        if to == "vllm":  # the version folder is itself a publishable artifact
            write_json_atomic(staging / VERSION_DIR / ARTIFACT_FILE, meta)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        fsync_tree(staging)  # every converted file durable before the folder appears under its name
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConvertResult(
        artifact=out, backend=to, model_name=model_name, vocab_size=meta["vocab_size"],
        tensor_parallel=tp, dtype=dtype, source=str(src),
        duration_s=round(time.perf_counter() - started, 3),
        verify=report.as_dict() if report else None, files=files)


def _check_request(to: str, dtype: str, adapters: bool, out: Path, device: str = "cpu") -> None:
    """Refuse a target, dtype, device or adapter request the target cannot honour, and a used ``out``."""
    if to not in BACKENDS:
        raise ConversionError(f"unknown target {to!r}: use one of {', '.join(BACKENDS)}")
    if device not in ("cpu", "gpu"):
        raise ConversionError(f"unknown device {device!r}: use cpu or gpu")
    dtypes = {"vllm": tuple(VLLM_DTYPE), "python": ("fp32", "fp16", "bf16")}.get(to, ("fp32", "fp16"))
    if dtype not in dtypes:
        raise ConversionError(f"unknown dtype {dtype!r} for {to}: use one of {', '.join(dtypes)}")
    if adapters and to != "vllm":
        raise ConversionError(f"adapters are served by the vllm target only; for {to}, merge the adapter "
                              "into a full checkpoint first (trainer.lora.merge_adapter)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists and is not empty; choose a new --out folder "
                              "(artifacts are never overwritten in place)")


def read_artifact(path: str | Path) -> dict[str, Any]:
    """``artifact.json`` of an artifact folder."""
    meta_path = Path(path) / ARTIFACT_FILE
    if not meta_path.is_file():
        raise ConversionError(f"{path} is not an artifact: it has no {ARTIFACT_FILE}")
    return json.loads(meta_path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- checks shared by both targets

def check_vocab(src: Path, config: dict[str, Any], reader: TensorReader,
                tokenizer_length: int) -> int:
    """Embedding rows of a checkpoint, after checking config, lm_head and tokenizer agree.

    These are the disagreements that made the original recipe serve garbage: embeddings
    resized to ``len(tokenizer)`` while the config (and so Triton) still claims the base
    model's vocabulary.
    """
    names = set(reader.keys())
    wte_name = _first(names, EMBEDDING_NAMES)
    head_name = _first(names, ("lm_head.weight",))
    tied = bool(config.get("tie_word_embeddings")) and head_name is None
    if wte_name is None or (head_name is None and not tied):
        raise CheckpointError(f"{src} lacks an input embedding ({' or '.join(EMBEDDING_NAMES)}) or "
                              "lm_head.weight; is it a *ForCausalLM checkpoint saved with save_pretrained()?")
    rows = reader.shape(wte_name)[0]
    head_rows = rows if tied else reader.shape(head_name)[0]
    declared = int(config.get("vocab_size", rows))
    if rows != declared:
        raise CheckpointError(
            f"{src}: the embeddings have {rows} rows but config.json says vocab_size {declared}. "
            "The embeddings were resized without updating the config (the bug that makes "
            "FasterTransformer serve garbage). Re-save the model with save_pretrained() after "
            f"resize_token_embeddings(), or set vocab_size to {rows} in config.json.")
    if head_rows != rows:
        raise CheckpointError(
            f"{src}: lm_head has {head_rows} rows but the embeddings have {rows}; the checkpoint "
            "is inconsistent. Resize both with model.resize_token_embeddings() and save again.")
    if tokenizer_length > rows:
        raise CheckpointError(
            f"{src}: the tokenizer has {tokenizer_length} tokens but the model only {rows} "
            "embedding rows, so some token ids have no embedding. Call "
            "model.resize_token_embeddings(len(tokenizer)) and save again.")
    return rows


def _first(names: set[str], choices: tuple[str, ...]) -> str | None:
    return next((n for n in choices if n in names), None)


def checkpoint_family(src: Path, backend: str) -> str:
    """The family of the checkpoint ``src``, after checking that ``backend`` can serve it.

    Raises :class:`CheckpointError` naming the family and the backends that serve it (the
    python backend serves every family; FasterTransformer only CodeGen).
    """
    from families import FamilyError, detect_checkpoint_family

    try:
        family = detect_checkpoint_family(src)
    except FamilyError as exc:
        raise CheckpointError(f"{src}: {exc}") from exc
    if backend not in family.backends:
        raise CheckpointError(
            f"{src} is a {family.name} checkpoint; the {backend} backend cannot serve it (it serves "
            f"{family.name} only through {' or '.join(family.backends)}). Convert with "
            "to='python' (repotune convert --to python) to serve it on Triton's python backend.")
    return family.name


def _check_model_type(src: Path, config: dict[str, Any]) -> None:
    kind = config.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{src} is a {kind!r} model; FasterTransformer converts CodeGen checkpoints "
                              f"(model_type one of {SUPPORTED_MODEL_TYPES}); convert with to='python' "
                              "to serve it on Triton's python backend")


# ---------------------------------------------------------------- python backend

def _to_python(src: Path, staging: Path, *, model_name: str, verify: bool, max_batch_size: int,
               progress: ProgressFn | None, gpus: Sequence[int] = (), dtype: str | None = None):
    config = read_config(src)
    family = checkpoint_family(src, "python")
    start_id, end_id, tok_len = token_ids(src)
    with TensorReader(src) as reader:
        vocab = check_vocab(src, config, reader, tok_len)
    payload = staging / "model"
    payload.mkdir()
    files = weight_files(src)
    extra = [p for p in src.iterdir() if p.is_file() and p.name in (
        "config.json", "generation_config.json", "model.safetensors.index.json",
        "pytorch_model.bin.index.json")]
    todo = files + extra
    for i, path in enumerate(todo):
        shutil.copy2(path, payload / path.name)
        _emit(progress, "copy", i + 1, len(todo), file=path.name)
    copy_tokenizer(src, payload)
    (staging / "config.pbtxt").write_text(python_backend_config(model_name, max_batch_size, gpus=gpus, dtype=dtype),
                                          encoding="utf-8")
    report = None
    if verify:
        from converter.verify import smoke_check_hf

        _emit(progress, "verify", 0, 1)
        report = smoke_check_hf(payload)
        _emit(progress, "verify", 1, 1)
    meta = {"vocab_size": vocab, "start_id": start_id, "end_id": end_id, "payload": "model",
            "family": family}
    return meta, report


# ---------------------------------------------------------------- vLLM (GPU)

def _to_vllm(src: Path, staging: Path, model_name: str, options: VllmOptions,
             adapters: Sequence[tuple[str, Path]]) -> dict[str, Any]:
    """The Triton model folder for the vLLM backend, re-checked against its documented format
    (no numerical verification: vLLM runs on GPUs only)."""
    from converter.vllm import check_vllm_model, write_vllm_model

    meta = write_vllm_model(src, staging, model_name=model_name, options=options,
                            adapters=[(n, Path(p).resolve()) for n, p in adapters])
    check_vllm_model(staging)
    return meta


# ---------------------------------------------------------------- FasterTransformer

def _to_fastertransformer(src: Path, staging: Path, *, gpus: int, dtype: str, model_name: str,
                          verify: bool, schema: Schema, max_batch_size: int, model_mount: str,
                          mp: int | None, progress: ProgressFn | None):
    from converter.fastertransformer import write_fastertransformer
    from converter.gptj import gptj_config_from_codegen, gptj_tensors, infer_qkv_blocks

    config = read_config(src)
    family = checkpoint_family(src, "fastertransformer")
    _check_model_type(src, config)
    start_id, end_id, tok_len = token_ids(src)
    is_v11 = schema == "v1.1"
    file_dtype = "fp32" if is_v11 else dtype
    blocks = mp or infer_qkv_blocks(config)
    with TensorReader(src) as reader:
        vocab = check_vocab(src, config, reader, tok_len)
        gptj_cfg = gptj_config_from_codegen(config, vocab_size=vocab)
        ft_dir = write_fastertransformer(
            gptj_tensors(reader, config, mp=blocks), gptj_cfg, staging,
            tensor_parallel=gpus, dtype=file_dtype, start_id=start_id, end_id=end_id,
            model_name=model_name, progress=progress)
    copy_tokenizer(src, staging / "tokenizer")
    n_embd, n_head = gptj_cfg["n_embd"], gptj_cfg["n_head"]
    pbtxt = fastertransformer_config(
        model_name, vocab_size=vocab, head_num=n_head, size_per_head=n_embd // n_head,
        inter_size=gptj_cfg.get("n_inner") or 4 * n_embd, num_layer=gptj_cfg["n_layer"],
        rotary_dim=gptj_cfg["rotary_dim"], start_id=start_id, end_id=end_id,
        tensor_parallel=gpus, max_seq_len=gptj_cfg["n_positions"], is_half=dtype == "fp16",
        schema=schema, model_mount=model_mount, max_batch_size=max_batch_size)
    (staging / "config.pbtxt").write_text(pbtxt, encoding="utf-8")
    report = None
    if verify:
        from converter.verify import verify as run_verify

        _emit(progress, "verify", 0, 1)
        report = run_verify(ft_dir, src)
        _emit(progress, "verify", 1, 1)
    meta = {"vocab_size": vocab, "start_id": start_id, "end_id": end_id,
            "payload": ft_dir.name, "schema": schema, "qkv_blocks": blocks,
            "weight_data_type": file_dtype, "model_mount": model_mount, "family": family}
    return meta, report


# ---------------------------------------------------------------- helpers

def _emit(progress: ProgressFn | None, stage: str, done: int, total: int, **extra: Any) -> None:
    if progress is not None:
        progress({"stage": stage, "done": done, "total": total, **extra})


def check_artifact(path: str | Path) -> dict[str, Any]:
    """Re-check an artifact before publishing: configs agree with each other and the payload.

    For FasterTransformer, every weight file's size is checked against ``config.ini`` and
    ``config.pbtxt``'s model parameters against ``config.ini``; for the python backend, the
    checkpoint's embeddings against its config. Returns ``artifact.json``.
    """
    from converter.fastertransformer import check_ft_files
    from converter.triton_config import parse_model_config

    path = Path(path)
    meta = read_artifact(path)
    if meta["backend"] == "vllm":
        from converter.vllm import check_vllm_model

        check_vllm_model(path)
        return meta
    pbtxt = (path / "config.pbtxt").read_text(encoding="utf-8")
    parse_model_config(pbtxt)
    if meta["backend"] == "fastertransformer":
        cfg = check_ft_files(path / f"{meta['tensor_parallel']}-gpu", pbtxt)
        rows = cfg.vocab_size
    else:
        model_dir = path / "model"
        config = read_config(model_dir)
        with TensorReader(model_dir) as reader:
            rows = check_vocab(model_dir, config, reader, 0)
    if meta.get("vocab_size") != rows:
        raise ConversionError(f"{path}/artifact.json says vocab_size {meta.get('vocab_size')} but "
                              f"the payload has {rows} embedding rows; convert again")
    return meta
