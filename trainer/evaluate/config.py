"""EvalConfig: every knob of the held-out evaluation and the promotion gate, in one place.

Importing this module is cheap (no torch); ``dataclasses.asdict(cfg)`` is what lands in
``eval.json`` so a report always says which thresholds produced its verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HIGHER_IS_BETTER = {"exact_match": True, "edit_similarity": True, "identifier_match": True,
                    "loss": False, "perplexity": False, "latency_ms": False}
"""Direction of every metric the evaluation reports (True: a larger value is better)."""

TASK_KINDS = ("line", "next_line", "block")
"""The three left-to-right completion task kinds, in the order tasks are dealt out."""


def _default_tolerances() -> dict[str, float]:
    return {"edit_similarity": 0.01, "exact_match": 0.01, "identifier_match": 0.01, "loss": 0.05}


@dataclass
class EvalConfig:
    """How tasks are built, how models are run, and when a candidate may replace production."""

    num_tasks: int = 200
    """Completion tasks drawn from the held-out records (split evenly over ``kinds``)."""
    seed: int = 0
    """Seed of the task draw and of the bootstrap; with the corpus version it fixes the task set."""
    max_new_tokens: int = 48
    """Generation cap for the one-line tasks (``line``, ``next_line``); they also stop at a newline."""
    block_max_new_tokens: int = 128
    """Generation cap for ``block`` tasks; they also stop after as many lines as the target has."""
    block_lines: int = 5
    """Lines in a ``block`` target (fewer at the end of a file)."""
    min_prefix_chars: int = 3
    """A ``line`` task cuts a line after at least this many non-indent characters."""
    kinds: tuple[str, ...] | None = None
    """Task kinds to build: a subset of ``("line", "next_line", "block")`` and, for a FIM family,
    of :data:`trainer.evaluate.tasks.FIM_TASK_KINDS`. None: chosen by family (the left-to-right
    kinds for CodeGen, the FIM kinds for a family that fills in the middle)."""
    family: str | None = None
    """Model family (``families.FAMILIES``) whose FIM prompt and stop tokens are used; None:
    detected from the candidate checkpoint (config ``model_type`` and tokenizer sentinels)."""
    token_healing: bool = True
    """Back off the prompt's last token and make the first generated token start with its text
    (prompts cut mid-token otherwise end in token sequences the model never saw)."""
    batch_size: int = 16
    """Prompts generated together (left-padded, one KV cache per batch)."""
    device: str = "auto"
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available, else CPU)."""
    num_threads: int | None = None
    """torch CPU threads while evaluating (restored afterwards); None keeps torch's setting.
    Small models on a busy machine run several times faster with 1."""
    loss_max_tokens: int = 100_000
    """Held-out tokens scored for per-token loss and perplexity (whole records, in hash order)."""
    primary_metric: str = "edit_similarity"
    """The metric the gate requires to improve: ``exact_match``, ``edit_similarity``,
    ``identifier_match``, ``loss``, ``perplexity`` or ``latency_ms`` (:data:`HIGHER_IS_BETTER`)."""
    margin: float = 0.005
    """Least improvement of the primary metric (its units, in its better direction) to pass."""
    confidence: float = 0.95
    """Two-sided confidence of the paired bootstrap interval on each metric's difference."""
    bootstrap: int = 1000
    """Bootstrap resamples (paired: the same tasks are drawn for candidate and production)."""
    tolerances: dict[str, float] = field(default_factory=_default_tolerances)
    """Per secondary metric, the largest regression (its units, in its worse direction) allowed.
    Metrics not listed are reported but not gated; the primary metric's entry is ignored."""

    def __post_init__(self) -> None:
        problems = []
        if self.primary_metric not in HIGHER_IS_BETTER:
            problems.append(f"primary_metric={self.primary_metric!r} is not one of {sorted(HIGHER_IS_BETTER)}")
        unknown = sorted(set(self.tolerances) - set(HIGHER_IS_BETTER))
        if unknown:
            problems.append(f"tolerances name unknown metrics {unknown}; known: {sorted(HIGHER_IS_BETTER)}")
        from trainer.evaluate.tasks import ALL_TASK_KINDS  # tasks imports this module

        bad_kinds = sorted(set(self.kinds or ()) - set(ALL_TASK_KINDS))
        if bad_kinds or (self.kinds is not None and not self.kinds):
            problems.append(f"kinds={self.kinds!r}: use a non-empty subset of {ALL_TASK_KINDS} (or None)")
        if self.family is not None:
            from families import FAMILIES

            if self.family not in FAMILIES:
                problems.append(f"family={self.family!r} is not one of {', '.join(FAMILIES)} (or None: detected)")
        if not 0.0 < self.confidence < 1.0:
            problems.append(f"confidence={self.confidence} must lie strictly between 0 and 1")
        if self.num_tasks < 1 or self.batch_size < 1 or self.bootstrap < 1:
            problems.append("num_tasks, batch_size and bootstrap must be at least 1")
        if self.max_new_tokens < 1 or self.block_max_new_tokens < 1 or self.block_lines < 1:
            problems.append("max_new_tokens, block_max_new_tokens and block_lines must be at least 1")
        if problems:
            raise ValueError("invalid EvalConfig: " + "; ".join(problems))
        self.kinds = tuple(self.kinds) if self.kinds is not None else None
