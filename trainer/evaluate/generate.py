"""Running a causal LM on tasks: batched greedy completion with a KV cache, and held-out loss.

Both functions take an already loaded (model, tokenizer); :func:`load_model` does the loading.
torch and transformers are imported inside the functions so ``import trainer`` stays cheap.

Generation is a plain greedy loop rather than ``model.generate`` because we need two things
it does not give per sequence: a stop rule that counts completed *lines* (after the first
non-blank character), and the time at which each sequence stopped (its latency).

Fill-in-the-middle tasks (``Task.suffix``, kinds :data:`~trainer.evaluate.tasks.FIM_TASK_KINDS`)
are asked the way an editor asks: the prompt is :func:`families.build_fim_prompt` of the
model's family, and a sequence also stops on any of :func:`families.stop_tokens` (end-of-text,
the sentinels, the file separator). Left-to-right tasks stop on end-of-text alone, as before.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from families import Family, FamilyError, build_fim_prompt, detect_family, get_family, stop_tokens
from families.adapters import MANIFEST, AdapterError, is_adapter, read_manifest
from trainer.errors import EvaluationError
from trainer.evaluate.config import EvalConfig
from trainer.evaluate.tasks import FIM_TASK_KINDS, Task, truncate_left, truncate_right

Progress = Callable[[dict[str, Any]], None] | None

LINE_KINDS = ("line", "next_line")
ONE_LINE_KINDS = (*LINE_KINDS, "fim_inline", "fim_line_end", "fim_line")
"""Kinds whose target is (part of) one line: short cap, stop after one line."""
INSIDE_LINE_KINDS = ("line", "fim_inline", "fim_line_end")
"""Kinds whose cursor is inside a line: the first newline ends the completion."""


@dataclass(frozen=True)
class Completion:
    """What a model produced for one task."""

    text: str
    """The completion, cut to the target's line count (blank leading lines dropped for line starts)."""
    latency_ms: float
    """Wall time from the start of its batch to the step at which this sequence stopped."""
    new_tokens: int
    """Tokens generated for it (including those cut off afterwards)."""


@dataclass
class LoadedModel:
    """A model ready for evaluation, with the name reports use for it."""

    model: Any
    tokenizer: Any
    name: str
    device: Any
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    family: Family | None = None
    """The model's family once :func:`model_family` resolved it (None: left-to-right only)."""
    """Per-model derived data (token tables), so nothing is keyed by object id globally."""

    @property
    def context(self) -> int:
        return context_length(self.model)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(ref: str | Path | LoadedModel, device: str = "auto") -> LoadedModel:
    """Load an HF causal-LM checkpoint folder (weights + tokenizer) in fp32 for evaluation.

    An adapter folder (:func:`families.adapters.is_adapter`) loads its base, checked by digest,
    with the adapter merged in memory (evaluation then runs at the base's speed) and the
    tokenizer saved with the adapter; a base that changed since training is an EvaluationError.
    """
    if isinstance(ref, LoadedModel):
        return ref
    path = Path(ref)
    if is_adapter(path):
        return _load_adapter(path, device)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise EvaluationError(
            f"no model checkpoint at {path} (looked for {path / 'config.json'} or {path / MANIFEST}); pass "
            "the folder a fine-tuning run wrote (runs/<id>/checkpoint) or a base model saved with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"could not load the model at {path}: {exc}") from exc
    # We truncate prompts ourselves; this only silences "sequence longer than maximum" warnings.
    tokenizer.model_max_length = 1 << 40
    chosen = resolve_device(device)
    model.to(chosen).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(path), device=chosen)


def _load_adapter(path: Path, device: str) -> LoadedModel:
    """An adapter folder as a LoadedModel: base + adapter merged, the family its manifest records."""
    from trainer.lora import load_adapted

    chosen = resolve_device(device)
    try:
        manifest = read_manifest(path)
        model, tokenizer = load_adapted(path, device=chosen)
    except AdapterError as exc:
        raise EvaluationError(f"cannot evaluate adapter {path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"could not load adapter {path} (peft files, tokenizer or base): {exc}") from exc
    tokenizer.model_max_length = 1 << 40
    family = None
    if manifest.family:
        try:
            family = get_family(manifest.family)
        except FamilyError:
            family = None  # an unknown recorded family: detect it from the model like any checkpoint
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(path), device=chosen, family=family)


def model_family(lm: LoadedModel, explicit: str | None = None) -> Family | None:
    """The family of ``lm`` (``explicit`` wins), remembered on it; None when undetectable.

    Detection reads the config's ``model_type`` and the tokenizer's sentinels. An architecture
    no family row knows is evaluated left to right, as every model was before families; an
    explicit name that is unknown raises :class:`EvaluationError`.
    """
    if explicit:
        try:
            lm.family = get_family(explicit)
        except FamilyError as exc:
            raise EvaluationError(f"EvalConfig.family: {exc}") from exc
        return lm.family
    if lm.family is None and "family_checked" not in lm.cache:
        lm.cache["family_checked"] = True
        tokenizer = lm.tokenizer
        vocab = set(tokenizer.get_vocab()) | {str(t) for t in getattr(tokenizer, "all_special_tokens", ())}
        try:
            lm.family = detect_family(getattr(lm.model.config, "model_type", None), vocab)
        except FamilyError:
            lm.family = None
    return lm.family


def context_length(model: Any) -> int:
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_id(tokenizer: Any) -> int:
    for value in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if value is not None:
            return int(value)
    return 0


@dataclass
class _Vocab:
    """Per token id: its text, newlines in it, newlines after its first non-blank character,
    and whether it has a non-blank character (tensors on the model's device)."""

    texts: list[str]
    nl_total: Any
    nl_after: Any
    has_content: Any
    allowed: dict[str, Any]
    """Token-healing cache: prefix text -> ids of the tokens whose text starts with it."""

    def starting_with(self, prefix: str):
        import torch

        found = self.allowed.get(prefix)
        if found is None:
            ids = [i for i, text in enumerate(self.texts) if text.startswith(prefix)]
            found = self.allowed[prefix] = torch.tensor(ids, dtype=torch.long, device=self.nl_total.device)
        return found


def _vocab(lm: LoadedModel, vocab: int) -> _Vocab:
    """The token tables of ``lm``'s tokenizer, built once per loaded model."""
    import torch

    cached = lm.cache.get("vocab")
    if cached is not None:
        return cached
    device, tokenizer = lm.device, lm.tokenizer
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab, len(tokenizer)))])
    texts += [""] * (vocab - len(texts))
    after, content = [], []
    for t in texts:
        stripped = t.lstrip()
        content.append(bool(stripped))
        after.append(stripped.count("\n") if stripped else 0)
    table = _Vocab(texts=texts,
                   nl_total=torch.tensor([t.count("\n") for t in texts], dtype=torch.long, device=device),
                   nl_after=torch.tensor(after, dtype=torch.long, device=device),
                   has_content=torch.tensor(content, dtype=torch.bool, device=device), allowed={})
    lm.cache["vocab"] = table
    return table


def _cap(task: Task, cfg: EvalConfig) -> int:
    return cfg.max_new_tokens if task.kind in ONE_LINE_KINDS else cfg.block_max_new_tokens


def postprocess(task: Task, generated: str) -> str:
    """Cut a raw generation to what is compared with the target."""
    if task.kind in INSIDE_LINE_KINDS:
        return generated.split("\n", 1)[0]
    lines = generated.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines[:task.target_lines])


def generate_completions(lm: LoadedModel, tasks: Sequence[Task], cfg: EvalConfig, *,
                         progress: Progress = None) -> list[Completion]:
    """Greedy-complete every task, in batches of prompts of similar length.

    Prompts are left-truncated to ``context - cap`` tokens and left-padded; one KV cache per
    batch; a sequence stops at EOS or once it has produced as many lines as its target
    (one for ``line``/``next_line``); the batch stops when all its sequences have.

    Token healing (``cfg.token_healing``): a prompt cut at an arbitrary character usually ends
    in a token the model rarely saw in that place (a lone ``"\\n"`` where training text had
    ``"\\n    "``). The last prompt token is removed and the first generated token must start
    with its text, which is then stripped from the completion.
    """
    import torch

    model, tokenizer = lm.model, lm.tokenizer
    eos = _eos_id(tokenizer)
    vocab = model.get_output_embeddings().weight.shape[0]
    table = _vocab(lm, vocab)
    family = model_family(lm, cfg.family)
    if any(t.kind in FIM_TASK_KINDS for t in tasks) and (family is None or not family.has_fim):
        name = family.name if family else getattr(lm.model.config, "model_type", "unknown")
        raise EvaluationError(
            f"fill-in-the-middle tasks need a FIM family, but {lm.name} is {name!r}; evaluate it with "
            "left-to-right kinds (EvalConfig.kinds=None picks them) or set EvalConfig.family")
    stops = stop_ids(tokenizer, family, eos)
    encoded, healed = _encode_tasks(lm, tasks, cfg, table, eos, family)
    order = sorted(range(len(tasks)), key=lambda i: (_cap(tasks[i], cfg), len(encoded[i]), i))
    results: list[Completion | None] = [None] * len(tasks)
    done_count = 0
    if progress:
        progress({"stage": "generate", "done": 0, "total": len(tasks)})
    # Batches never mix caps, so every sequence in one shares the same step budget.
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < cfg.batch_size and _cap(tasks[batches[-1][0]], cfg) == _cap(tasks[i], cfg):
            batches[-1].append(i)
        else:
            batches.append([i])
    with torch.inference_mode():
        for batch in batches:
            outs = _generate_batch(model, [encoded[i] for i in batch], [tasks[i] for i in batch],
                                   [healed[i] for i in batch], _cap(tasks[batch[0]], cfg), stops, lm.device, table)
            for i, (ids, latency) in zip(batch, outs, strict=True):
                raw = tokenizer.decode(ids, skip_special_tokens=True)
                if healed[i] and raw.startswith(healed[i]):
                    raw = raw[len(healed[i]):]
                results[i] = Completion(text=postprocess(tasks[i], raw), latency_ms=latency * 1000.0,
                                        new_tokens=len(ids))
            done_count += len(batch)
            if progress:
                progress({"stage": "generate", "done": done_count, "total": len(tasks)})
    return [r for r in results if r is not None]


def stop_ids(tokenizer: Any, family: Family | None, eos: int) -> list[int]:
    """Token ids that end a completion: ``eos`` first, then the family's stop tokens that are
    single tokens of ``tokenizer`` (for CodeGen that is ``eos`` alone)."""
    vocab = tokenizer.get_vocab()
    found = [vocab[t] for t in (stop_tokens(family) if family else ()) if t in vocab]
    return list(dict.fromkeys([eos, *found]))


def _encode_tasks(lm: LoadedModel, tasks: Sequence[Task], cfg: EvalConfig, table: _Vocab, eos: int,
                  family: Family | None) -> tuple[list[list[int]], list[str]]:
    """Prompt ids per task (left-truncated to the context minus its cap) and the healed text.

    A FIM task's prompt is the family's FIM prompt; it is never token-healed (it ends in the
    middle sentinel, not in a cut token).
    """
    encoded: list[list[int]] = []
    healed: list[str] = []
    ctx = lm.context
    for task in tasks:
        keep = ctx - _cap(task, cfg)
        if keep < 1:
            raise EvaluationError(
                f"model context {ctx} leaves no room for a prompt with {_cap(task, cfg)} new tokens; "
                "lower EvalConfig.max_new_tokens / block_max_new_tokens")
        if task.kind in FIM_TASK_KINDS and family is not None:
            encoded.append(fim_prompt_ids(lm.tokenizer, family, task.prompt, task.suffix, keep))
            healed.append("")
            continue
        # A bounded character window keeps tokenising linear in the context, not the file size.
        ids = lm.tokenizer(task.prompt[-keep * 16:], add_special_tokens=False)["input_ids"][-keep:] or [eos]
        prefix = ""
        if cfg.token_healing and len(ids) >= 2:
            prefix = table.texts[ids[-1]]
            ids = ids[:-1]
        encoded.append(ids)
        healed.append(prefix)
    return encoded, healed


def fim_budgets(tokenizer: Any, family: Family, keep: int) -> tuple[int, int]:
    """(prefix tokens, suffix tokens) a FIM prompt of at most ``keep`` tokens may hold.

    The sentinels' own tokens come off first; the suffix gets a quarter of the rest (the code
    right after the hole matters most, the prefix carries the file's context).
    """
    fixed = len(tokenizer(build_fim_prompt(family, "", ""), add_special_tokens=False)["input_ids"])
    room = max(keep - fixed, 2)
    suffix = max(room // 4, 1)
    return room - suffix, suffix


def fim_prompt_ids(tokenizer: Any, family: Family, prefix: str, suffix: str, keep: int) -> list[int]:
    """Token ids of ``family``'s FIM prompt for (prefix, suffix), at most ``keep`` of them.

    Too long a prompt loses the start of the prefix and the end of the suffix (never a
    sentinel), cut on token boundaries of the original text.
    """
    def encode(pre: str, suf: str) -> list[int]:
        return tokenizer(build_fim_prompt(family, pre, suf), add_special_tokens=False)["input_ids"]

    prefix, suffix = prefix[-keep * 16:], suffix[:keep * 16]
    ids = encode(prefix, suffix)
    pre_budget, suf_budget = fim_budgets(tokenizer, family, keep)
    while len(ids) > keep and pre_budget > 0:
        # Tokens merging across a seam can add one or two; shrink the prefix until it fits.
        ids = encode(truncate_left(prefix, tokenizer, pre_budget), truncate_right(suffix, tokenizer, suf_budget))
        pre_budget -= max(len(ids) - keep, 0)
    return ids


def _generate_batch(model, prompts, tasks, healed, cap, stops, device, table: _Vocab):
    import torch

    eos = stops[0]
    stop_set = set(stops)
    stop_tensor = torch.tensor(stops, dtype=torch.long, device=device)
    nl_total, nl_after, has_content = table.nl_total, table.nl_after, table.has_content
    bsz, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((bsz, width), eos, dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stop_after = torch.tensor([1 if t.kind in ONE_LINE_KINDS else t.target_lines for t in tasks], device=device)
    # A cursor inside a line (``line``, ``fim_inline``, ``fim_line_end``) is already in it; the
    # others start counting at the first non-blank char.
    started = torch.tensor([t.kind in INSIDE_LINE_KINDS for t in tasks], dtype=torch.bool, device=device)
    lines = torch.zeros(bsz, dtype=torch.long, device=device)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(bsz)]
    finished_at = [0.0] * bsz
    start = time.perf_counter()
    # transformers 5.x renamed ``past_key_values`` to ``cache``; use whichever this model takes.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past, logits = getattr(out, cache_kw), out.logits[:, -1, :]
    next_pos = positions[:, -1:] + 1
    if any(healed):
        restricted = torch.full_like(logits, float("-inf"))
        for row, prefix in enumerate(healed):
            allowed = table.starting_with(prefix) if prefix else slice(None)
            restricted[row, allowed] = logits[row, allowed]
        logits = restricted
    for step in range(cap):
        token = logits.argmax(-1)
        active = ~done
        if step == 0 and any(healed):
            # The healed prefix belongs to the prompt: count only what the first token adds.
            counted_list, content_list = [], []
            for row, tok in enumerate(token.tolist()):
                rest = table.texts[tok][len(healed[row]):]
                body = rest if started[row] else rest.lstrip()
                counted_list.append(body.count("\n") if body.strip() or started[row] else 0)
                content_list.append(bool(rest.strip()))
            counted = torch.tensor(counted_list, device=device)
            content = torch.tensor(content_list, dtype=torch.bool, device=device)
        else:
            counted = torch.where(started, nl_total[token], nl_after[token])
            content = has_content[token]
        lines += counted * active
        started |= content
        newly = active & (torch.isin(token, stop_tensor) | (lines >= stop_after))
        for row, (tok, live) in enumerate(zip(token.tolist(), active.tolist(), strict=True)):
            if live and tok not in stop_set:
                generated[row].append(tok)
        done |= newly
        now = time.perf_counter() - start
        for row in newly.nonzero().flatten().tolist():
            finished_at[row] = now
        if bool(done.all()) or step == cap - 1:
            break
        mask = torch.cat([mask, torch.ones((bsz, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_kw: past})
        past, logits = getattr(out, cache_kw), out.logits[:, -1, :]
        next_pos = next_pos + 1
    end = time.perf_counter() - start
    return [(generated[r], finished_at[r] if done[r] else end) for r in range(bsz)]


def record_losses(lm: LoadedModel, records: Sequence[Mapping[str, Any]], *, max_tokens: int,
                  batch_size: int = 8, progress: Progress = None) -> list[tuple[float, int]]:
    """Summed next-token negative log-likelihood (nats) and predicted-token count per record.

    Each record is tokenised and split into non-overlapping windows of the model context;
    records are taken in the given order until ``max_tokens`` tokens are covered (the last
    one cut short), so two models given the same records and tokenizer score the same tokens.
    Records beyond the budget get ``(0.0, 0)``.
    """
    import torch
    import torch.nn.functional as F

    model, tokenizer, ctx = lm.model, lm.tokenizer, lm.context
    windows: list[tuple[int, list[int]]] = []
    budget = max_tokens
    for index, record in enumerate(records):
        if budget <= 0:
            break
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"][:budget + 1]
        budget -= max(len(ids) - 1, 0)
        for lo in range(0, max(len(ids) - 1, 0), ctx):
            chunk = ids[lo:lo + ctx]
            if len(chunk) >= 2:
                windows.append((index, chunk))
    parts = [[0.0, 0] for _ in records]
    windows.sort(key=lambda w: len(w[1]))
    eos = _eos_id(tokenizer)
    with torch.inference_mode():
        for lo in range(0, len(windows), batch_size):
            group = windows[lo:lo + batch_size]
            width = max(len(c) for _, c in group)
            ids = torch.full((len(group), width), eos, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (_, chunk) in enumerate(group):
                ids[row, :len(chunk)] = torch.tensor(chunk)
                mask[row, :len(chunk)] = 1
            ids, mask = ids.to(lm.device), mask.to(lm.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                  reduction="none").view(len(group), -1)
            valid = mask[:, 1:].bool()
            sums = (nll * valid).sum(-1).tolist()
            counts = valid.sum(-1).tolist()
            for row, (index, _) in enumerate(group):
                parts[index][0] += sums[row]
                parts[index][1] += int(counts[row])
            if progress:
                progress({"stage": "loss", "done": min(lo + batch_size, len(windows)), "total": len(windows)})
    return [(nll, count) for nll, count in parts]
