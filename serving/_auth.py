"""API keys, the models each may use, and the Copilot session tokens minted from them.

A key grants every model (a plain string, or :class:`ApiKey` with ``models=None``) or only the
models it names: a model trained on one team's private repositories completes that code for
whoever may query it, so a team's key should reach only its team's models.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early
exit), so response timing says nothing about how much of a guess was right.

Copilot-era clients first ``GET /copilot_internal/v2/token`` and then send what it returned as
their bearer token. The proxy hands one out only to a caller that presented a valid key, and
the token is never the key itself: ``rt2.<key id>.<expiry>.<scope>.<signature>``, where the key
id is a short hash of the key, the scope the key's models (``*`` for all, else the sorted names,
comma-joined and base64url-encoded) and the signature an HMAC-SHA256 of everything before it
keyed by the key. Changing the scope breaks the signature, so a token can never reach more than
its key could; it is accepted until it expires, stops working as soon as its key is removed, and
narrows with its key (the scope used is the token's intersected with the key's current one).
Tokens of the older ``rt1.<key id>.<expiry>.<signature>`` form carry no scope and get their
key's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TOKEN_PREFIX = "rt2"
OLD_TOKEN_PREFIX = "rt1"
ALL_MODELS = "*"
"""A token's scope field when its key grants every model."""


@dataclass(frozen=True)
class ApiKey:
    """One accepted key and the models it may use (``None``: every model the proxy serves)."""

    secret: str = field(repr=False)
    """The key itself; never logged, never in a repr."""
    models: frozenset[str] | None = None
    """Names of the models this key reaches; ``None`` means all of them."""

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


Key = str | ApiKey
"""What :class:`serving.ProxyConfig.api_keys` holds: a plain string grants every model."""


def as_api_key(key: Key) -> ApiKey:
    return key if isinstance(key, ApiKey) else ApiKey(key)


def _secrets(keys: Iterable[Key]) -> list[ApiKey]:
    return [as_api_key(k) for k in keys]


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _sign(key: str, payload: str) -> str:
    return hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _encode_scope(models: frozenset[str] | None) -> str:
    if models is None:
        return ALL_MODELS
    return base64.urlsafe_b64encode(",".join(sorted(models)).encode()).decode().rstrip("=")


def _decode_scope(text: str) -> frozenset[str] | None:
    """The models a token's scope field names; raises ValueError on anything malformed."""
    if text == ALL_MODELS:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("bad scope") from exc
    return frozenset(m for m in raw.split(",") if m)


def key_matches(presented: str, keys: Sequence[Key]) -> bool:
    """True if ``presented`` equals one of ``keys`` (constant time over all of them)."""
    return matching_key(presented, keys) is not None


def matching_key(presented: str, keys: Sequence[Key]) -> ApiKey | None:
    """The configured key ``presented`` equals, compared in constant time over all of them."""
    found = None
    for key in _secrets(keys):
        if hmac.compare_digest(presented.encode(), key.secret.encode()):
            found = key
    return found


def mint_token(key: Key, ttl_s: int, now: float | None = None) -> tuple[str, int]:
    """A session token for ``key``, carrying its scope, and its expiry (Unix seconds)."""
    api_key = as_api_key(key)
    expires = int(now if now is not None else time.time()) + int(ttl_s)
    payload = f"{TOKEN_PREFIX}.{_key_id(api_key.secret)}.{expires}.{_encode_scope(api_key.models)}"
    return f"{payload}.{_sign(api_key.secret, payload)}", expires


def token_key(token: str, keys: Sequence[Key], now: float | None = None) -> ApiKey | None:
    """The scope ``token`` grants (an :class:`ApiKey` whose secret is the token), or ``None`` if it
    was not minted from one of ``keys``, was altered, or has expired."""
    parts = token.split(".")
    if len(parts) == 5 and parts[0] == TOKEN_PREFIX:
        key_id, expires, scope_text, signature = parts[1:]
        payload = token.rsplit(".", 1)[0]
    elif len(parts) == 4 and parts[0] == OLD_TOKEN_PREFIX:
        key_id, expires, signature = parts[1:]
        scope_text, payload = ALL_MODELS, token.rsplit(".", 1)[0]
    else:
        return None
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    try:
        scope = _decode_scope(scope_text)
    except ValueError:
        return None
    found = None
    for key in _secrets(keys):
        valid = hmac.compare_digest(_sign(key.secret, payload).encode(), signature.encode())
        if valid and _key_id(key.secret) == key_id:
            found = key
    if found is None:
        return None
    models = found.models if scope is None else (scope if found.models is None else scope & found.models)
    return ApiKey(token, models)


def token_valid(token: str, keys: Sequence[Key], now: float | None = None) -> bool:
    """True if ``token`` was minted from one of ``keys`` and has not expired."""
    return token_key(token, keys, now) is not None


def authenticate(presented: str, keys: Sequence[Key], now: float | None = None) -> ApiKey | None:
    """The key (with its models) ``presented`` stands for: a configured key or a live token."""
    if not presented:
        return None
    return matching_key(presented, keys) or token_key(presented, keys, now)


def presented_credential(header: str) -> str:
    """The credential in ``Authorization: Bearer <x>`` or ``token <x>`` (empty if neither)."""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "token") else ""
