"""GPT-J → FasterTransformer: raw little-endian weight files for N ranks plus ``config.ini``.

FasterTransformer reads each file as exactly ``prod(shape)`` values with no header; a short
file leaves GPU memory uninitialised while Triton still reports the model READY, and a long
one is silently truncated. So every file written is checked against the shape
:func:`expected_files` derives from ``config.ini`` — independently of the code that wrote it —
and :func:`check_ft_files` can re-check a folder (and its ``config.pbtxt``) at any time.
"""

from __future__ import annotations

import configparser
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import CheckpointError, ConversionError, FileSizeMismatch
from converter.weight_maps import GPTJ_DROP, GPTJ_TO_FT, lookup, target_names

FT_DTYPES: dict[str, Any] = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}
"""On-disk element type per ``weight_data_type`` (always little-endian)."""

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FTConfig:
    """The ``[gptj]`` section of ``config.ini`` (what FT ≥ 5.1 reads; v1.1 reads config.pbtxt)."""

    model_name: str
    head_num: int
    size_per_head: int
    inter_size: int
    num_layer: int
    rotary_embedding: int
    """Rotary dimensions per head (GPT-J's ``rotary_dim``)."""
    vocab_size: int
    """Rows of ``model.wte.bin`` and ``model.lm_head.*`` (from the tensors, never the tokenizer)."""
    start_id: int
    end_id: int
    weight_data_type: str
    """``fp32`` or ``fp16``: the element type of every ``.bin`` file."""
    tensor_para_size: int
    """Ranks the per-rank files are split into (the ``N`` of ``N-gpu``)."""
    layernorm_eps: float = 1e-5
    max_pos_seq_len: int = 2048

    @property
    def hidden(self) -> int:
        return self.head_num * self.size_per_head

    def to_ini(self) -> str:
        lines = ["[gptj]"] + [f"{k} = {v}" for k, v in asdict(self).items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def read(cls, ft_dir: str | Path) -> FTConfig:
        path = Path(ft_dir) / "config.ini"
        parser = configparser.ConfigParser()
        if not parser.read(path) or "gptj" not in parser:
            raise ConversionError(f"{path} is missing or has no [gptj] section; convert again")
        sec = parser["gptj"]
        try:
            return cls(
                model_name=sec.get("model_name", "codegen"),
                head_num=sec.getint("head_num"), size_per_head=sec.getint("size_per_head"),
                inter_size=sec.getint("inter_size"), num_layer=sec.getint("num_layer"),
                rotary_embedding=sec.getint("rotary_embedding"),
                vocab_size=sec.getint("vocab_size"), start_id=sec.getint("start_id"),
                end_id=sec.getint("end_id"),
                weight_data_type=sec.get("weight_data_type", "fp32"),
                tensor_para_size=sec.getint("tensor_para_size",
                                            fallback=_rank_count_from_name(Path(ft_dir))),
                layernorm_eps=sec.getfloat("layernorm_eps", fallback=1e-5),
                max_pos_seq_len=sec.getint("max_pos_seq_len", fallback=2048),
            )
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"{path} has a missing or malformed key: {exc}") from exc


def _rank_count_from_name(ft_dir: Path) -> int:
    head = ft_dir.name.split("-gpu")[0]
    return int(head) if head.isdigit() else 1


def expected_files(cfg: FTConfig) -> dict[str, tuple[int, ...]]:
    """Every file of an ``<N>-gpu`` folder and the shape FasterTransformer will read from it."""
    e, v, n = cfg.hidden, cfg.vocab_size, cfg.tensor_para_size
    inter = cfg.inter_size
    if e % n or inter % n or cfg.head_num % n:
        raise ConversionError(f"tensor_parallel {n} must divide head_num {cfg.head_num}, "
                              f"hidden {e} and inter_size {inter}")
    files: dict[str, tuple[int, ...]] = {
        "model.wte.bin": (v, e),
        "model.lm_head.weight.bin": (v, e),
        "model.lm_head.bias.bin": (v,),
        "model.final_layernorm.weight.bin": (e,),
        "model.final_layernorm.bias.bin": (e,),
    }
    for i in range(cfg.num_layer):
        p = f"model.layers.{i}."
        files[p + "input_layernorm.weight.bin"] = (e,)
        files[p + "input_layernorm.bias.bin"] = (e,)
        files[p + "mlp.dense_4h_to_h.bias.bin"] = (e,)
        for r in range(n):
            files[p + f"attention.query_key_value.weight.{r}.bin"] = (e, 3, e // n)
            files[p + f"attention.dense.weight.{r}.bin"] = (e // n, e)
            files[p + f"mlp.dense_h_to_4h.weight.{r}.bin"] = (e, inter // n)
            files[p + f"mlp.dense_h_to_4h.bias.{r}.bin"] = (inter // n,)
            files[p + f"mlp.dense_4h_to_h.weight.{r}.bin"] = (inter // n, e)
    return files


def check_ft_files(ft_dir: str | Path, pbtxt: str | None = None) -> FTConfig:
    """Check an ``<N>-gpu`` folder: every file present with the byte size its shape implies.

    With ``pbtxt`` (the text of ``config.pbtxt``), also check that its model parameters agree
    with ``config.ini``. Raises :class:`FileSizeMismatch` / :class:`ConversionError`.
    """
    ft_dir = Path(ft_dir)
    cfg = FTConfig.read(ft_dir)
    item = FT_DTYPES[cfg.weight_data_type].itemsize
    problems = []
    for name, shape in expected_files(cfg).items():
        path = ft_dir / name
        want = int(np.prod(shape)) * item
        if not path.is_file():
            problems.append(f"{name}: missing (expected {want} bytes for shape {list(shape)})")
            continue
        got = path.stat().st_size
        if got != want:
            problems.append(f"{name}: {got} bytes, but shape {list(shape)} in "
                            f"{cfg.weight_data_type} needs {want}")
    if problems:
        hint = ""
        if any(p.startswith(("model.wte", "model.lm_head")) for p in problems):
            rows = (ft_dir / "model.wte.bin").stat().st_size // (cfg.hidden * item) \
                if (ft_dir / "model.wte.bin").is_file() else "?"
            hint = (f" model.wte.bin holds {rows} rows while config.ini says vocab_size "
                    f"{cfg.vocab_size}: FasterTransformer would serve garbage. Convert again "
                    "instead of editing vocab_size or copying embedding files by hand.")
        raise FileSizeMismatch(f"{ft_dir} does not match its config.ini ({len(problems)} "
                               f"problem(s)): " + "; ".join(problems[:5]) + "." + hint)
    if pbtxt is not None:
        _check_pbtxt_agrees(cfg, pbtxt, ft_dir)
    return cfg


def _check_pbtxt_agrees(cfg: FTConfig, pbtxt: str, ft_dir: Path) -> None:
    from converter.triton_config import config_parameters

    params = config_parameters(pbtxt)
    pairs = {"vocab_size": cfg.vocab_size, "head_num": cfg.head_num,
             "size_per_head": cfg.size_per_head, "inter_size": cfg.inter_size,
             "decoder_layers": cfg.num_layer, "rotary_embedding": cfg.rotary_embedding,
             "tensor_para_size": cfg.tensor_para_size}
    wrong = [f"{k} is {params.get(k)!r} in config.pbtxt but {v} in config.ini"
             for k, v in pairs.items() if params.get(k) != str(v)]
    if wrong:
        raise FileSizeMismatch(
            f"config.pbtxt disagrees with {ft_dir}/config.ini and the weight files: "
            + "; ".join(wrong) + ". FasterTransformer would read the wrong number of values "
            "(garbage output); regenerate config.pbtxt with `repotune convert`.")


def _ft_config(gptj_config: dict[str, Any], *, tensor_parallel: int, dtype: str, start_id: int,
               end_id: int, model_name: str) -> FTConfig:
    """The FasterTransformer ``config.ini`` values of a GPT-J HF config."""
    n_embd, n_head = int(gptj_config["n_embd"]), int(gptj_config["n_head"])
    return FTConfig(
        model_name=model_name, head_num=n_head, size_per_head=n_embd // n_head,
        inter_size=int(gptj_config.get("n_inner") or 4 * n_embd),
        num_layer=int(gptj_config["n_layer"]), rotary_embedding=int(gptj_config["rotary_dim"]),
        vocab_size=int(gptj_config["vocab_size"]), start_id=start_id, end_id=end_id,
        weight_data_type=dtype, tensor_para_size=tensor_parallel,
        layernorm_eps=float(gptj_config.get("layer_norm_epsilon", 1e-5)),
        max_pos_seq_len=int(gptj_config.get("n_positions", 2048)))


def _ft_weights(tensors: Iterable[tuple[str, Any]], qkv_parts: dict[str, dict[str, Any]]
                ) -> Iterator[tuple[str | None, str | None, str, Any]]:
    """``(transform, split, target template, tensor)`` per FasterTransformer weight, in the
    order the GPT-J tensors arrive; q, k and v are held in ``qkv_parts`` until all three
    of a layer are there, then fused into one (what is left there at the end is incomplete)."""
    for name, tensor in tensors:
        hit = lookup(name, GPTJ_TO_FT, GPTJ_DROP, "GPT-J checkpoint")
        if hit is None:
            continue
        row, groups = hit
        template = target_names(row, groups)[0]
        if row.transform == "qkv":
            layer = qkv_parts.setdefault(template, {})
            layer[groups[1]] = _to_numpy(tensor)
            if len(layer) < 3:
                continue
            del qkv_parts[template]
            # [3, E_out, E_in] → [E_in, 3, E_out]: FT multiplies x [.., E_in] by it.
            tensor = np.stack([layer["q"], layer["k"], layer["v"]]).transpose(2, 0, 1)
        yield row.transform, row.split, template, tensor


def write_fastertransformer(
    tensors: Iterable[tuple[str, Any]],
    gptj_config: dict[str, Any],
    dst: str | Path,
    *,
    tensor_parallel: int = 1,
    dtype: str = "fp32",
    start_id: int,
    end_id: int,
    model_name: str = "codegen",
    progress: ProgressFn | None = None,
    workers: int | None = None,
) -> Path:
    """Write ``<dst>/<N>-gpu/`` from a stream of (GPT-J name, tensor); returns that folder.

    Tensors are transformed and written by a thread pool (NumPy and file writes release the
    GIL) with a bounded number in flight, so memory stays near a few tensors.
    """
    if dtype not in FT_DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}: use one of {sorted(FT_DTYPES)}")
    cfg = _ft_config(gptj_config, tensor_parallel=tensor_parallel, dtype=dtype, start_id=start_id,
                     end_id=end_id, model_name=model_name)
    expected = expected_files(cfg)  # also checks N divides the shapes
    out = Path(dst) / f"{tensor_parallel}-gpu"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.ini").write_text(cfg.to_ini(), encoding="utf-8")

    np_dtype = FT_DTYPES[dtype]
    workers = workers or min(8, (os.cpu_count() or 2) + 1)
    in_flight = threading.BoundedSemaphore(workers * 2)
    futures: list[Future] = []
    written: list[str] = []
    lock = threading.Lock()
    qkv_parts: dict[str, dict[str, Any]] = {}

    def job(row_transform: str, split: str | None, template: str, tensor: Any) -> None:
        try:
            arr = _to_numpy(tensor) if row_transform != "qkv" else tensor
            if row_transform == "transpose":
                arr = arr.T
            parts = [arr] if split is None else np.split(
                arr, tensor_parallel, axis=-1 if split == "cols" else 0)
            for rank, part in enumerate(parts):
                name = template.format(rank=rank)
                _write_checked(out / name, part, np_dtype, expected)
                with lock:
                    written.append(name)
                    done = len(written)
                if progress is not None:
                    progress({"stage": "write", "done": done, "total": len(expected), "file": name})
        finally:
            in_flight.release()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for transform, split, template, tensor in _ft_weights(tensors, qkv_parts):
                in_flight.acquire()
                futures.append(pool.submit(job, transform, split, template, tensor))
                _raise_first_error(futures)
        finally:
            for f in futures:
                f.exception()  # wait for every job before leaving the pool
    _raise_first_error(futures)
    if qkv_parts:
        raise CheckpointError(f"incomplete attention projections (need q, k and v) for "
                              f"{sorted(qkv_parts)}")
    missing = sorted(set(expected) - set(written))
    if missing:
        raise CheckpointError(f"the checkpoint did not provide {len(missing)} FasterTransformer "
                              f"file(s), e.g. {missing[:3]}; is it a complete GPT-J/CodeGen model?")
    check_ft_files(out)
    return out


def gptj_to_fastertransformer(
    src: str | Path,
    dst: str | Path,
    tensor_parallel: int = 1,
    dtype: str = "fp32",
    *,
    model_name: str = "codegen",
    progress: ProgressFn | None = None,
) -> Path:
    """Convert the GPT-J checkpoint ``src`` into ``<dst>/<N>-gpu/``; returns that folder.

    Start/end ids come from the tokenizer stored with ``src`` (falling back to the config's
    bos/eos ids); ``vocab_size`` is the row count of ``transformer.wte.weight``.
    """
    from converter._checkpoint import TensorReader, read_config, token_ids

    src = Path(src)
    config = read_config(src)
    if config.get("model_type") != "gptj":
        raise CheckpointError(f"{src} is a {config.get('model_type')!r} model, not GPT-J; "
                              "use converter.convert() for a CodeGen checkpoint")
    try:
        start_id, end_id, _ = token_ids(src)
    except CheckpointError:
        start_id = int(config.get("bos_token_id", 0))
        end_id = int(config.get("eos_token_id", start_id))
    with TensorReader(src) as reader:
        config = {**config, "vocab_size": reader.shape("transformer.wte.weight")[0]}
        return write_fastertransformer(reader.items(), config, dst, tensor_parallel=tensor_parallel,
                                       dtype=dtype, start_id=start_id, end_id=end_id,
                                       model_name=model_name, progress=progress)


def _to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    import torch

    return tensor.detach().to(torch.float32).numpy()


def _write_checked(path: Path, arr: np.ndarray, np_dtype: Any, expected: dict[str, tuple[int, ...]]
                   ) -> None:
    shape = expected.get(path.name)
    if shape is None:
        raise ConversionError(f"internal error: {path.name} is not an expected FasterTransformer file")
    if tuple(arr.shape) != shape:
        raise CheckpointError(f"{path.name} would have shape {list(arr.shape)} but config.ini "
                              f"implies {list(shape)}; the checkpoint's tensors disagree with its config")
    np.ascontiguousarray(arr, dtype=np_dtype).tofile(path)
    want = int(np.prod(shape)) * np_dtype.itemsize
    got = path.stat().st_size
    if got != want:
        raise FileSizeMismatch(f"wrote {got} bytes to {path}, expected {want} (disk full?)")


def _raise_first_error(futures: list[Future]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
