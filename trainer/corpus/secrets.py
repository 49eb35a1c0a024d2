"""Secret scrubbing: a fast prefilter, then detect-secrets' plugins on the candidate lines.

detect-secrets scans a line in ~0.2 ms, far too slow for every line of a large corpus, so
:func:`scrub` first finds candidates cheaply: well-known token formats (AWS, GitHub, Slack,
Stripe, Google …) and private-key blocks are redacted directly by regex; lines that look like
a credential assignment or hold a long high-entropy literal go to detect-secrets, which
decides. A redacted secret becomes :data:`PLACEHOLDER`. Pure functions of the text.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter

PLACEHOLDER = "<SECRET>"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY( BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\Z)",
    re.S)
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"      # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub tokens
    r"|glpat-[A-Za-z0-9_\-]{20,}"                                   # GitLab PAT
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}"                               # Slack
    r"|(?:sk|rk)_live_[A-Za-z0-9]{20,}"                             # Stripe
    r"|AIza[0-9A-Za-z_\-]{35}"                                      # Google API key
    r"|sk-[A-Za-z0-9]{32,}"                                         # OpenAI-style
    r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # JWT
    r")")
# Prefilter for detect-secrets, run over the whole text at C speed: a credential-ish keyword
# assigned a quoted literal, or any long quoted literal (its entropy is checked below).
_CANDIDATE = re.compile(
    r"(?i)(?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|auth|credential|private[_-]?key)"
    r"[\w\"'\]]*\s*(?::=|=>|[:=])\s*[\"'`][^\"'`\s]{6,}"
    r"|[\"'`]([A-Za-z0-9+/=_\-]{20,})[\"'`]")
_VALUE = re.compile(r"[:=]\s*[\"'`]?([^\s\"'`,;]{6,})")


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@functools.lru_cache(maxsize=1)
def _detect_secrets():
    """detect-secrets' default plugin settings, entered once per process."""
    from detect_secrets.core import scan
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline

    # Configured once per process (entering default_settings() per file costs ~1 ms).
    cache_bust()
    configure_settings_from_baseline({"plugins_used": [
        {"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()]})
    return scan.scan_line


def _redact_line(line: str) -> tuple[str, int]:
    """Ask detect-secrets about one candidate line; redact what it reports."""
    scan_line = _detect_secrets()
    found = list(scan_line(line))
    if not found:
        return line, 0
    count = 0
    for secret in found:
        value = secret.secret_value or ""
        if len(value) >= 6 and value in line:
            line = line.replace(value, PLACEHOLDER)
            count += 1
    if count == 0:
        # The plugin matched but reported only part of the value (e.g. a prefix): blank the
        # assigned value so nothing of it survives.
        line, count = _VALUE.subn(lambda m: m.group(0).replace(m.group(1), PLACEHOLDER), line, count=1)
        count = max(count, 1) if PLACEHOLDER in line else count
    return line, count


def scrub(text: str) -> tuple[str, int]:
    """Return ``text`` with every secret found replaced by :data:`PLACEHOLDER`, and the count."""
    count = 0
    if "PRIVATE KEY" in text:
        text, n = _PRIVATE_KEY.subn(
            lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY-----\n{PLACEHOLDER}\n-----END {m.group(1)}PRIVATE KEY-----",
            text)
        count += n
    text, n = _TOKENS.subn(PLACEHOLDER, text)
    count += n
    starts = set()
    for m in _CANDIDATE.finditer(text):
        literal = m.group(1)
        if literal is not None and _entropy(literal) <= 4.0:
            continue
        starts.add(text.rfind("\n", 0, m.start()) + 1)
    if not starts:
        return text, count
    pieces = []
    last = 0
    for start in sorted(starts):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        new, n = _redact_line(line) if len(line) <= 2000 else (line, 0)
        pieces += [text[last:start], new]
        last = end
        count += n
    pieces.append(text[last:])
    return "".join(pieces), count
