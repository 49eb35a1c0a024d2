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
import typing as t
from pathlib import Path

from bot.errors import ConfigError

if t.TYPE_CHECKING:
    from bot.settings import Settings
    from serving import ProxyConfig
    from serving.http import HttpLimits

LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""Addresses only this machine reaches; anything else needs API keys (or an explicit insecure flag)."""



def api_keys(raw: str | None) -> tuple[str, ...]:
    """``serving.api_keys`` (env ``REPOTUNE_API_KEYS`` or ``REPOTUNE_API_KEYS_FILE``), comma-separated."""
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    return host in LOOPBACK or host.startswith("127.")


def check_exposure(host: str, keys: tuple[str, ...], insecure: bool) -> None:
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
