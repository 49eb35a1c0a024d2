"""Several models in one RepoTune: the ``[[models]]`` tables and a model's view of the settings.

Each ``[[models]]`` table is a :class:`ModelSpec`: the engine name editors ask for, the base
checkpoint and family it fine-tunes, the repositories it learns from (and so may reveal), the
training method (LoRA by default: an adapter version is megabytes, not a full checkpoint) and
optional ``[training]`` / ``[evaluation]`` overrides. No ``[[models]]`` at all is today's
behaviour: one implicit model named ``serving.model_name`` learning from every repository.

The rest of the bot works on one model at a time through :func:`settings_for`: the settings
with ``serving.model_name`` set to the model, ``repos`` narrowed to its repositories and its
overrides applied to ``[training]`` and ``[evaluation]``. So the scheduler, a run's steps, the
gate's baseline and the serving repository need no model argument of their own: a run's
corpora, held-out records, lock and Triton model all follow from the view it was started with.
Parsing and validation of the tables are :mod:`bot.config`'s (:func:`parse_models`).
"""

from __future__ import annotations

import dataclasses
import typing as t

from bot.errors import BotError, ConfigError
from bot.model_spec import METHODS as METHODS
from bot.model_spec import NAME_RE as NAME_RE
from bot.model_spec import SPEC_TRAINING_FIELDS as SPEC_TRAINING_FIELDS
from bot.model_spec import ModelSpec as ModelSpec
from bot.settings import Settings

# --- parsing and validation (bot.config calls this) -----------------------------------------


def parse_models(settings: Settings, entries: t.Any,
                 coerce: t.Callable[[str, t.Any, t.Any], t.Any]) -> list[ModelSpec]:
    """The ``[[models]]`` tables as specs, checked against ``settings`` (repositories, the
    ``[training]`` / ``[evaluation]`` keys). ``coerce(key, value, type)`` is the loader's own
    value check, so a model's values are checked exactly like the sections'. ConfigError names
    the key (``models.NAME.repos`` …) and the fix."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("models must be an array of tables: write [[models]] before each model")
    hints = t.get_type_hints(ModelSpec)
    known = [f.name for f in dataclasses.fields(ModelSpec) if f.metadata.get("setting") is not False]
    specs: list[ModelSpec] = []
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ConfigError(f"models.name = {name!r}: every [[models]] entry needs a name that is a valid "
                              "Triton model name (letters, digits, `_`, `-`; at most 64; no dots or slashes)")
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in [[models]] {name!r}; known: {known}")
        values = {k: coerce(f"models.{name}.{k}", v, hints[k]) for k, v in entry.items()}
        spec = ModelSpec(**values)
        _check(settings, spec)
        for section in ("training", "evaluation"):
            types = t.get_type_hints(type(getattr(settings, section)))
            setattr(spec, section, {k: coerce(f"models.{name}.{section}.{k}", v, types[k])
                                    for k, v in getattr(spec, section).items()})
        specs.append(spec)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"models.name: {', '.join(dup)} is configured more than once; model names must be unique")
    return specs


def _check(settings: Settings, spec: ModelSpec) -> None:
    where = f"models.{spec.name}"
    if spec.method not in METHODS:
        raise ConfigError(f"{where}.method = {spec.method!r}: use lora or full")
    if not spec.repos:
        raise ConfigError(f"{where}.repos is empty: name the [[repos]] this model learns from "
                          f"(e.g. repos = [\"web\"]); a model never learns from every repository by default")
    configured = [r.name for r in settings.repos]
    missing = [r for r in spec.repos if r not in configured]
    if missing:
        raise ConfigError(f"{where}.repos names {', '.join(map(repr, missing))}, which no [[repos]] entry "
                          f"is called (configured: {', '.join(configured) or 'none'})")
    if spec.lora_r <= 0 or spec.lora_alpha <= 0 or not 0 <= spec.lora_dropout < 1:
        raise ConfigError(f"{where}: lora_r and lora_alpha must be positive and 0 <= lora_dropout < 1")
    for section in ("training", "evaluation"):
        live = {f.name for f in dataclasses.fields(getattr(settings, section))}
        overrides = getattr(spec, section)
        bad = sorted(k for k in overrides if k not in live)
        if bad:
            raise ConfigError(f"{where}.{section} overrides unknown [{section}] key(s) {', '.join(bad)}; "
                              f"`repotune config --help-settings` lists the {section}.* keys")
    twice = sorted(set(spec.training) & set(SPEC_TRAINING_FIELDS))
    if twice:
        raise ConfigError(f"{where}.training sets {', '.join(twice)}: write it on the model itself "
                          f"({where.split('.')[0]}.{twice[0]} in the [[models]] table)")


# --- the specs of a configuration -----------------------------------------------------------


def _implicit(settings: Settings) -> ModelSpec:
    tr = settings.training
    defaults = ModelSpec()
    return ModelSpec(name=settings.serving.model_name, base_model=tr.base_model, family=tr.family,
                     repos=[r.name for r in settings.repos], method=getattr(tr, "method", "full"),
                     lora_r=getattr(tr, "lora_r", defaults.lora_r),
                     lora_alpha=getattr(tr, "lora_alpha", defaults.lora_alpha),
                     lora_dropout=getattr(tr, "lora_dropout", defaults.lora_dropout),
                     lora_target_modules=list(getattr(tr, "lora_target_modules", [])), implicit=True)


def model_specs(settings: Settings) -> list[ModelSpec]:
    """Every configured model; without ``[[models]]``, the one implicit model (today's behaviour:
    named ``serving.model_name``, every repository, the method of ``[training]``)."""
    return list(settings.models) if settings.models else [_implicit(settings)]


def model_names(settings: Settings) -> list[str]:
    return [s.name for s in model_specs(settings)]


def get_model(settings: Settings, name: str | None) -> ModelSpec:
    """The model called ``name``. None is fine with one model (it is that one); with several, a
    BotError lists the names, since acting on the wrong model is worse than asking."""
    specs = model_specs(settings)
    if name is None:
        if settings.model is not None:
            return settings.model
        if len(specs) == 1:
            return specs[0]
        raise BotError(f"several models are configured ({', '.join(s.name for s in specs)}): "
                       "name one with --model NAME")
    for spec in specs:
        if spec.name == name:
            return spec
    raise BotError(f"no model named {name!r} (configured: {', '.join(s.name for s in specs)})")


def models_for_repo(settings: Settings, repo_name: str) -> list[ModelSpec]:
    """The models that learn from repository ``repo_name`` (the implicit model learns from all)."""
    return [s for s in model_specs(settings) if s.implicit or repo_name in s.repos]


def settings_for(settings: Settings, model: str | ModelSpec | None) -> Settings:
    """``settings`` as model ``model`` sees them (see the module doc). The implicit model's view
    is ``settings`` with :attr:`Settings.model` set: nothing else changes."""
    spec = model if isinstance(model, ModelSpec) else get_model(settings, model)
    if settings.model is not None:
        if settings.model.name == spec.name:
            return settings
        raise BotError(f"these settings are model {settings.model.name!r}'s view; "
                       f"take model {spec.name!r}'s from the full settings")
    if spec.implicit:
        return dataclasses.replace(settings, model=spec)
    tr = settings.training
    have = {f.name for f in dataclasses.fields(tr)}
    values: dict[str, t.Any] = {"base_model": spec.base_model or tr.base_model,
                                "family": spec.family or tr.family}
    values.update({k: getattr(spec, k) for k in SPEC_TRAINING_FIELDS[2:] if k in have})
    values.update(spec.training)
    return dataclasses.replace(
        settings, model=spec,
        serving=dataclasses.replace(settings.serving, model_name=spec.name),
        repos=[r for r in settings.repos if r.name in spec.repos],
        training=dataclasses.replace(tr, **values),
        evaluation=dataclasses.replace(settings.evaluation, **spec.evaluation))

