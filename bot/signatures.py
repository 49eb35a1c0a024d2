"""Forge delivery signatures: GitHub's HMAC-SHA256 of the raw body and GitLab's shared token.

Both are compared in constant time (:func:`hmac.compare_digest`), so the answer's timing says
nothing about how much of a guess was right. Pure functions of bytes; :mod:`bot.events`
re-exports them beside the payload parsers.
"""

from __future__ import annotations

import hashlib
import hmac


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the HMAC-SHA256 of the raw body under ``secret`` (constant time)."""
    if not header:
        return False
    return hmac.compare_digest(github_signature(secret, body).encode(), header.strip().encode())


def verify_gitlab_token(secret: str, header: str | None) -> bool:
    """Whether ``X-Gitlab-Token`` equals the configured secret (constant time)."""
    if header is None:
        return False
    return hmac.compare_digest(secret.encode(), header.encode())
