"""API keys and the Copilot session tokens minted from them.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early
exit), so response timing says nothing about how much of a guess was right.

Copilot-era clients first ``GET /copilot_internal/v2/token`` and then send what it returned as
their bearer token. The proxy hands one out only to a caller that presented a valid key, and
the token is never the key itself: ``rt1.<key id>.<expiry>.<signature>``, where the key id is a
short hash of the key and the signature an HMAC-SHA256 of id and expiry keyed by the key. It is
accepted until it expires, and stops working as soon as its key is removed from the
configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

TOKEN_PREFIX = "rt1"


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _signature(key: str, key_id: str, expires: int) -> str:
    return hmac.new(key.encode(), f"{TOKEN_PREFIX}.{key_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """True if ``presented`` equals one of ``keys`` (constant time over all of them)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


def mint_token(key: str, ttl_s: int, now: float | None = None) -> tuple[str, int]:
    """A session token for ``key`` and its expiry (Unix seconds)."""
    expires = int(now if now is not None else time.time()) + int(ttl_s)
    key_id = _key_id(key)
    return f"{TOKEN_PREFIX}.{key_id}.{expires}.{_signature(key, key_id, expires)}", expires


def token_valid(token: str, keys: Sequence[str], now: float | None = None) -> bool:
    """True if ``token`` was minted from one of ``keys`` and has not expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not parts[2].isdigit():
        return False
    _, key_id, expires, signature = parts
    if int(expires) < (now if now is not None else time.time()):
        return False
    valid = False
    for key in keys:
        expected = _signature(key, _key_id(key), int(expires))
        valid |= hmac.compare_digest(expected.encode(), signature.encode()) and _key_id(key) == key_id
    return valid


def presented_credential(header: str) -> str:
    """The credential in ``Authorization: Bearer <x>`` or ``token <x>`` (empty if neither)."""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "token") else ""
