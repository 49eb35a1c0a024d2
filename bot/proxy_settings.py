"""The completion proxy as ``[serving]`` configures it, for ``repotune serve`` and ``repotune up``.

Both commands put the same proxy on the network, so both build it here: :func:`proxy_config`
turns :class:`bot.settings.ServingSettings` into a :class:`serving.ProxyConfig`,
:func:`http_limits` into the waitress edge's :class:`serving.http.HttpLimits`, and
:func:`check_exposure` refuses a listener beyond loopback that has no API keys. A setting added
to ``[serving]`` therefore reaches both commands, and neither can forget the key check.

``serving`` is imported inside the functions: ``bot`` must import without the serving extra.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t
from pathlib import Path

from bot.errors import ConfigError

if t.TYPE_CHECKING:
    from bot.settings import Settings
    from serving import ApiKey, ProxyConfig
    from serving.http import HttpLimits

LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""Addresses only this machine reaches; anything else needs API keys (or an explicit insecure flag)."""



KEYS_VARIABLE = "REPOTUNE_API_KEYS (or the file REPOTUNE_API_KEYS_FILE names)"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A Triton model name (what ``[serving] model_name`` and the repository's folders are called)."""


def api_keys(raw: str | None) -> tuple[str | ApiKey, ...]:
    """``serving.api_keys`` (env ``REPOTUNE_API_KEYS`` or ``REPOTUNE_API_KEYS_FILE``) as the proxy takes them.

    One entry per line, or entries separated by ``;``; blank lines and lines starting with ``#``
    are skipped. An entry is ``KEY`` (every model; a plain string, as before models could be
    named), ``KEY:model-a,model-b`` (only those models: an :class:`serving.ApiKey`), or, as
    before, several all-model keys separated by commas (``k1, k2``). Anything else is a
    :class:`ConfigError` naming the entry by its number, never by its key."""
    from serving import ApiKey

    out: list[str | ApiKey] = []
    seen: dict[str, int] = {}
    entries = [e.strip() for e in re.split(r"[\n;]", raw or "")]
    for number, entry in enumerate(entries, start=1):
        if not entry or entry.startswith("#"):
            continue
        if ":" in entry:
            secret, _, scope = entry.partition(":")
            parsed: list[str | ApiKey] = [ApiKey(_check_key(secret.strip(), number),
                                                 _scope(scope, number))]
        else:
            parsed = [_check_key(k.strip(), number) for k in entry.split(",") if k.strip()]
        for key in parsed:
            secret = key.secret if isinstance(key, ApiKey) else key
            if secret in seen:
                raise ConfigError(f"{KEYS_VARIABLE}: entry {number} repeats the key of entry {seen[secret]}; "
                                  "list each key once, with every model it may use")
            seen[secret] = number
            out.append(key)
    return tuple(out)


def _check_key(secret: str, number: int) -> str:
    if not secret:
        raise ConfigError(f"{KEYS_VARIABLE}: entry {number} has no key before ':'; write KEY:model-a,model-b")
    if any(c.isspace() or c in ",:" for c in secret):
        raise ConfigError(f"{KEYS_VARIABLE}: the key of entry {number} contains a space, ',' or ':'; keys are "
                          "single words (e.g. `openssl rand -hex 24`), one entry per line")
    return secret


def _scope(text: str, number: int) -> frozenset[str]:
    """The model names after ``KEY:`` (at least one, each a valid model name)."""
    names = [n.strip() for n in text.split(",")]
    if not any(names):
        raise ConfigError(f"{KEYS_VARIABLE}: entry {number} ends with ':' but names no model; write "
                          "KEY:model-a,model-b, or KEY alone for every model")
    for name in names:
        if not _MODEL_NAME.fullmatch(name):
            # Not echoed: a key pasted on the wrong side of ':' would land in the message.
            what = ("an empty model name" if not name else
                    "a model name with characters other than letters, digits, '_', '.' and '-'")
            raise ConfigError(f"{KEYS_VARIABLE}: entry {number} has {what}; separate model names by "
                              "commas: KEY:model-a,model-b")
    return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    return host in LOOPBACK or host.startswith("127.")


def check_exposure(host: str, keys: tuple[str | ApiKey, ...], insecure: bool) -> None:
    """Refuse to put an unauthenticated model on the network: its completions reveal the code it learnt.

    Raises :class:`ConfigError` naming the variables that provide keys and the development flag."""
    if keys or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host} without API keys: anyone who reaches it could read completions of "
        "your private code. Set REPOTUNE_API_KEYS (or REPOTUNE_API_KEYS_FILE=/run/secrets/...), listen on "
        "127.0.0.1 (serving.proxy_host), or set serving.insecure_no_api_keys / pass "
        "--insecure-no-api-keys for a trusted network.")


def _check_family(name: str | None) -> None:
    if name is None:
        return
    from families import FAMILIES

    if name not in FAMILIES:
        raise ConfigError(f"serving.family = {name!r} is not a known model family; use one of "
                          f"{', '.join(FAMILIES)}, or unset it to detect the family of each version")


def telemetry_folder(settings: Settings) -> Path:
    """Where the proxy records completions and editor events: ``serving.events_dir``, else
    ``<home>/telemetry`` (the status views read acceptance from the same folder)."""
    configured = settings.serving.events_dir
    return Path(configured).expanduser() if configured else Path(settings.home) / "telemetry"


def proxy_config(settings: Settings, **overrides: t.Any) -> ProxyConfig:
    """The proxy ``settings.serving`` describes, on the model repository ``<home>/triton``.

    ``overrides`` are ``ProxyConfig`` fields a command line chose (``triton_url``,
    ``model_name``, ``timeout_s``); ``None`` values are ignored. Tabby's events go to
    ``serving.events_dir``, by default ``<home>/telemetry``."""
    from bot.settings import PROXY_SETTINGS
    from serving import ProxyConfig

    sv = settings.serving
    _check_family(sv.family)
    values: dict[str, t.Any] = {name: getattr(sv, name) for name in PROXY_SETTINGS}
    values.update(
        triton_url=sv.triton_url, model_repository=settings.home / "triton", model_name=sv.model_name,
        timeout_s=sv.request_timeout_seconds, token_ttl_s=sv.token_ttl_seconds,
        api_keys=api_keys(sv.api_keys),
        events_dir=telemetry_folder(settings),
        telemetry_dir=telemetry_folder(settings) if sv.telemetry else None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values["triton_url"]:
        raise ConfigError("the proxy needs a Triton: set serving.triton_url (REPOTUNE_SERVING_TRITON_URL) "
                          "or let `repotune serve` / `repotune up` start the bundled one")
    return ProxyConfig(**values)


def http_limits(settings: Settings) -> HttpLimits:
    """The waitress edge's limits for the proxy (its body limit is the proxy's own)."""
    from serving.http import HttpLimits

    sv = settings.serving
    return dataclasses.replace(HttpLimits(), max_body_bytes=sv.max_body_bytes, threads=sv.proxy_threads)
