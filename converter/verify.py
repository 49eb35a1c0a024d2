"""Prove a conversion right: compare logits with the Hugging Face CodeGen model.

:func:`verify` runs an independent NumPy implementation of the GPT-J forward pass (the
computation FasterTransformer performs) directly on the FasterTransformer files — any rank
split, merged back — and compares its logits on sample inputs with those of the Hugging Face
CodeGen reference. It shares no code with the writer, so a wrong qkv order, a wrong transpose,
a wrong rank split or a short embedding file shows up as a numeric mismatch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConversionError, VerificationFailed

SAMPLE_TEXTS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\nfor name in os.listdir('.'):\n    print(name)",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
)
"""Inputs every verification runs (tokenised with the checkpoint's own tokenizer)."""

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
"""Largest allowed max |Δ logit| by FT weight data type (relative to max(1, max |logit|))."""


@dataclass
class VerifyReport:
    """Outcome of a verification; raising :class:`VerificationFailed` carries one too."""

    max_abs_diff: list[float]
    """Max |Δ logit| per sample input."""
    tolerance: float
    """Allowed max |Δ| (already scaled by the logits' magnitude)."""
    weight_data_type: str
    """Data type of the FT files that were checked (``fp32``/``fp16``), or ``hf`` for a smoke check."""
    tensor_parallel: int
    """Ranks the files were split into."""
    inputs: list[list[int]] = field(default_factory=list)
    """Token ids of each sample input."""
    argmax_agreement: list[float] = field(default_factory=list)
    """Fraction of positions whose top token agrees, per input."""

    @property
    def passed(self) -> bool:
        return all(d <= self.tolerance for d in self.max_abs_diff)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


# ---------------------------------------------------------------- python backend smoke check

def _load_hf(folder: Path, error: type[Exception], message: str):
    """(tokenizer, fp32 model in eval mode) of a Hugging Face folder; loader errors become
    ``error`` with ``message`` (``{}`` = the folder) and the loader's own words."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as exc:
        raise error(f"{message.format(folder)}: {exc}") from exc
    return tok, model.eval()


def smoke_check_hf(model_dir: str | Path) -> VerifyReport:
    """Load a packaged Hugging Face checkpoint and check its logits are finite on sample inputs."""
    import torch

    model_dir = Path(model_dir)
    tok, model = _load_hf(model_dir, VerificationFailed, "the packaged checkpoint {} does not load")
    inputs, diffs = [], []
    with torch.no_grad():
        for text in SAMPLE_TEXTS:
            ids = tok(text)["input_ids"][:64] or [0]
            logits = model(torch.tensor([ids])).logits[0]
            if not bool(torch.isfinite(logits).all()):
                raise VerificationFailed(f"{model_dir} produces non-finite logits on {text[:30]!r}")
            inputs.append(ids)
            diffs.append(0.0)
    return VerifyReport(max_abs_diff=diffs, tolerance=0.0, weight_data_type="hf",
                        tensor_parallel=1, inputs=inputs, argmax_agreement=[1.0] * len(inputs))


# ---------------------------------------------------------------- FasterTransformer files

def verify(ft_dir: str | Path, reference_ckpt: str | Path, *, texts: tuple[str, ...] = SAMPLE_TEXTS,
           max_tokens: int = 48, tolerance: float | None = None, seed: int = 0) -> VerifyReport:
    """Compare the NumPy GPT-J forward over ``ft_dir`` with the Hugging Face model ``reference_ckpt``.

    ``ft_dir`` is an ``<N>-gpu`` folder (or an artifact holding one). Inputs are ``texts``
    tokenised by the reference's tokenizer plus one random id sequence that reaches the last
    embedding rows. Raises :class:`VerificationFailed` with the per-input differences when
    any exceeds the tolerance (``TOLERANCE`` by weight type, scaled by the logits' magnitude).
    """
    import torch

    from converter.fastertransformer import check_ft_files

    ft_dir = _find_ft_dir(Path(ft_dir))
    cfg = check_ft_files(ft_dir)
    reference_ckpt = Path(reference_ckpt)
    tok, model = _load_hf(reference_ckpt, ConversionError, "cannot load the reference model {}")
    _repack_reference_qkv(model, reference_ckpt)
    ref_rows = model.get_input_embeddings().weight.shape[0]
    if ref_rows != cfg.vocab_size:
        raise VerificationFailed(f"{ft_dir} has vocab_size {cfg.vocab_size} but the reference "
                                 f"{reference_ckpt} has {ref_rows} embedding rows: not a "
                                 "conversion of this checkpoint")
    limit = min(max_tokens, cfg.max_pos_seq_len)
    inputs = [(tok(t)["input_ids"][:limit] or [cfg.end_id]) for t in texts]
    rng = np.random.default_rng(seed)
    inputs.append([cfg.vocab_size - 1, *rng.integers(0, cfg.vocab_size, size=min(limit, 24) - 1).tolist()])

    with torch.no_grad():
        ref = [model(torch.tensor([ids])).logits[0].numpy().astype(np.float64) for ids in inputs]
    del model
    got = FTForward(ft_dir, cfg).logits(inputs)

    base = TOLERANCE.get(cfg.weight_data_type, 1e-3) if tolerance is None else tolerance
    scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
    tol = base * scale
    diffs = [float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)]
    agree = [float((g.argmax(-1) == r.argmax(-1)).mean()) for g, r in zip(got, ref, strict=True)]
    report = VerifyReport(max_abs_diff=diffs, tolerance=tol, weight_data_type=cfg.weight_data_type,
                          tensor_parallel=cfg.tensor_para_size, inputs=inputs,
                          argmax_agreement=agree)
    if not report.passed:
        detail = ", ".join(f"input {i}: max |Δ| {d:.3g} (top-1 agreement {a:.0%})"
                           for i, (d, a) in enumerate(zip(diffs, agree, strict=True)))
        raise VerificationFailed(
            f"FasterTransformer files in {ft_dir} do not reproduce {reference_ckpt}: {detail}; "
            f"tolerance {tol:.3g}. The converted model would serve wrong completions; do not "
            "publish it (check the qkv block count, mp=, and the source checkpoint).")
    return report


def _repack_reference_qkv(model: Any, reference_ckpt: Path) -> None:
    """Make Hugging Face's CodeGen (which hard-codes 4 qkv blocks) read an 8-block checkpoint.

    codegen2-1B/3.7B group their fused qkv rows in 8 blocks; transformers' CodeGen splits
    in 4, so without this the reference itself would be wrong. The rows are regrouped into
    the 4-block layout; everything else stays the reference's own computation.
    """
    import torch

    from converter._checkpoint import read_config
    from converter.gptj import infer_qkv_blocks, pack_qkv, split_qkv

    config = read_config(reference_ckpt)
    blocks = infer_qkv_blocks(config)
    if config.get("model_type") != "codegen" or blocks == 4:
        return
    with torch.no_grad():
        for layer in model.transformer.h:
            w = layer.attn.qkv_proj.weight
            w.copy_(pack_qkv(*split_qkv(w.detach().clone(), blocks, config["n_head"]), mp=4))


def _find_ft_dir(path: Path) -> Path:
    if (path / "config.ini").is_file():
        return path
    found = sorted(p for p in path.glob("*-gpu") if (p / "config.ini").is_file())
    if len(found) != 1:
        raise ConversionError(f"{path} is not a FasterTransformer folder (no config.ini) and holds "
                              f"{len(found)} '<N>-gpu' folders; pass the <N>-gpu folder itself")
    return found[0]


class FTForward:
    """GPT-J forward pass in NumPy (float64) over FasterTransformer files, layer by layer.

    Written from the model's definition — parallel attention and MLP off one layer norm,
    rotary on the first ``rotary_embedding`` dims of each head with GPT-J's interleaved
    (every-two) rotation, gelu_new, biased lm_head — not from the converter's code.
    """

    def __init__(self, ft_dir: Path, cfg: Any) -> None:
        from converter.fastertransformer import FT_DTYPES

        self.dir = ft_dir
        self.cfg = cfg
        self.dtype = FT_DTYPES[cfg.weight_data_type]

    def _load(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = np.fromfile(self.dir / name, dtype=self.dtype)
        return arr.reshape(shape).astype(np.float64)

    def _ranks(self, template: str, shape: tuple[int, ...], axis: int) -> np.ndarray:
        n = self.cfg.tensor_para_size
        return np.concatenate([self._load(template.format(r), shape) for r in range(n)], axis=axis)

    def logits(self, inputs: list[list[int]]) -> list[np.ndarray]:
        c = self.cfg
        e, n, inter = c.hidden, c.tensor_para_size, c.inter_size
        wte = self._load("model.wte.bin", (c.vocab_size, e))
        xs = [wte[np.asarray(ids)] for ids in inputs]
        del wte
        for i in range(c.num_layer):
            p = f"model.layers.{i}."
            ln_w = self._load(p + "input_layernorm.weight.bin", (e,))
            ln_b = self._load(p + "input_layernorm.bias.bin", (e,))
            qkv = self._ranks(p + "attention.query_key_value.weight.{}.bin", (e, 3, e // n), -1)
            dense = self._ranks(p + "attention.dense.weight.{}.bin", (e // n, e), 0)
            w1 = self._ranks(p + "mlp.dense_h_to_4h.weight.{}.bin", (e, inter // n), -1)
            b1 = self._ranks(p + "mlp.dense_h_to_4h.bias.{}.bin", (inter // n,), -1)
            w2 = self._ranks(p + "mlp.dense_4h_to_h.weight.{}.bin", (inter // n, e), 0)
            b2 = self._load(p + "mlp.dense_4h_to_h.bias.bin", (e,))
            for k, x in enumerate(xs):
                h = _layer_norm(x, ln_w, ln_b, c.layernorm_eps)
                attn = self._attention(np.einsum("te,ekf->ktf", h, qkv)) @ dense
                mlp = _gelu_new(h @ w1 + b1) @ w2 + b2
                xs[k] = x + attn + mlp
        ln_w = self._load("model.final_layernorm.weight.bin", (e,))
        ln_b = self._load("model.final_layernorm.bias.bin", (e,))
        head = self._load("model.lm_head.weight.bin", (c.vocab_size, e))
        bias = self._load("model.lm_head.bias.bin", (c.vocab_size,))
        return [_layer_norm(x, ln_w, ln_b, c.layernorm_eps) @ head.T + bias for x in xs]

    def _attention(self, qkv: np.ndarray) -> np.ndarray:
        c = self.cfg
        t = qkv.shape[1]
        q, k, v = (m.reshape(t, c.head_num, c.size_per_head).transpose(1, 0, 2) for m in qkv)
        q, k = _rotary(q, c.rotary_embedding), _rotary(k, c.rotary_embedding)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(c.size_per_head)
        scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        return (probs @ v).transpose(1, 0, 2).reshape(t, c.hidden)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_new(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _rotary(x: np.ndarray, rot: int) -> np.ndarray:
    """GPT-J rotary: pairs (0,1), (2,3)… of the first ``rot`` dims turn by position × freq."""
    t = x.shape[1]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
    angle = np.arange(t)[:, None] * inv_freq[None, :]  # [T, rot/2]
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = x[..., 0:rot:2], x[..., 1:rot:2]
    out = x.copy()
    out[..., 0:rot:2] = even * cos - odd * sin
    out[..., 1:rot:2] = odd * cos + even * sin
    return out
