"""Secret scrubbing: a fast prefilter, then detect-secrets' plugins on the candidate lines.

detect-secrets scans a line in ~0.2 ms, far too slow for every line of a large corpus, so
:func:`scrub` first finds candidates cheaply: well-known token formats (AWS, GitHub, Slack,
Stripe, Google …) and private-key blocks are redacted directly by regex; lines that look like
a credential assignment or hold a long high-entropy literal go to detect-secrets, which
decides. A redacted secret becomes :data:`PLACEHOLDER`. Pure functions of the text.

Speed (the corpus build's hot spot): Python's regex engine only scans fast (GB/s) for a
pattern that starts with one literal character; a case-insensitive keyword alternation runs
at ~15 MB/s. So :func:`scrub` works on an ASCII proxy of the text (:func:`_proxy`: same
offsets, non-ASCII characters replaced by stand-ins that keep every match): literal-prefixed
searches prove that no token format can match (the token regex then never runs), and
:func:`_fast_candidates` finds the candidate lines from keyword hits on a lowercased copy
plus quote-led long literals. It finds every line the reference pattern :data:`_CANDIDATE`
finds (a property test checks this), at ~10x its speed. Texts with a token hint or a key block
take the reference path (:func:`_reference_candidates`).
"""

from __future__ import annotations

import codecs
import functools
import math
import re
from collections import Counter
from collections.abc import Iterator

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


@functools.lru_cache(maxsize=8192)
def _redact_line(line: str) -> tuple[str, int]:
    """Ask detect-secrets about one candidate line; redact what it reports (pure, so cached:
    the same assignment line recurs across files and versions)."""
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


# --------------------------------------------------------------------------- fast path
# Every match of _TOKENS contains one of these (each alternative is listed next to its hint).
_TOKEN_HINT_RES = (
    re.compile(rb"A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA|Iza)").search,  # AWS key ids, Google
    re.compile(rb"g(?:h[pousr]_|ithub_pat_|lpat-)").search,           # GitHub, GitLab
)
_TOKEN_HINTS = (b"xox", b"k_live_", b"sk-", b"eyJ")                 # Slack, Stripe, OpenAI, JWT
# Every credential assignment (the first alternative of _CANDIDATE) has one of these
# operator-quote-literal triples, and starts with a keyword: one of _KEYWORDS, or a _KEY_OFFSETS
# prefix (api, access, private, with an optional _ or -) before "key".
_WS = rb"\t\n\x0b\x0c\r\x1c-\x1f "  # what str patterns' \s matches among ASCII characters
_OP_TAIL = rb"[" + _WS + rb"]*[\"'`][^\"'`" + _WS + rb"]{6}"  # as in _ASSIGN: no docstring opener
_OP_RES = (re.compile(rb"=>?" + _OP_TAIL).search, re.compile(rb":=?" + _OP_TAIL).search)
_KEYWORDS = (b"pass", b"secret", b"token", b"auth", b"credential")
_KEY_OFFSETS = (3, 4, 6, 7, 8)
_ASSIGN = re.compile(  # _CANDIDATE's first alternative, for lowercased ASCII bytes
    rb"(?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|auth|credential|private[_-]?key)"
    rb"[\w\"'\]]*[" + _WS + rb"]*(?::=|=>|[:=])[" + _WS + rb"]*[\"'`][^\"'`" + _WS + rb"]{6,}")
# _CANDIDATE's second alternative, one pattern per opening quote (a literal first character).
_QUOTED_RES = tuple(re.compile(q + rb"([A-Za-z0-9+/=_\-]{20,})[\"'`]").search for q in (b"'", b'"', b"`"))


# Non-ASCII characters that (?i) equates with an ASCII letter (all of them: see the tests).
_FOLDS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}


def _proxy_chars(err: UnicodeEncodeError) -> tuple[str, int]:
    """Stand-ins for non-ASCII characters: a folded letter, ``a`` for any other word character,
    a space for whitespace, ``?`` for the rest, so that :data:`_CANDIDATE` and the token
    formats match the proxy wherever they match the text (and sometimes more)."""
    run = err.object[err.start:err.end]
    out = [_FOLDS.get(c) or ("a" if c.isalnum() else " " if c.isspace() else "?") for c in run]
    return "".join(out), err.end


codecs.register_error("repotune-secrets-proxy", _proxy_chars)


def _proxy(text: str) -> bytes:
    """One ASCII byte per character of ``text`` (itself, if ASCII), same offsets."""
    return text.encode("ascii", "repotune-secrets-proxy")


def _may_hold_token(data: bytes) -> bool:
    """False only if no _TOKENS pattern can match (the cheap test that spares running it)."""
    return any(h in data for h in _TOKEN_HINTS) or any(s(data) for s in _TOKEN_HINT_RES)


def _find_all(data: bytes, needle: bytes) -> Iterator[int]:
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def _fast_candidates(data: bytes, text: str) -> set[int]:
    """Line starts (offsets) of the candidate lines of ``text``; ``data`` is its :func:`_proxy`.

    A superset of :func:`_reference_candidates`: every position where either alternative of
    :data:`_CANDIDATE` matches, where the reference's ``finditer`` sees only non-overlapping
    matches. Pure bytes searches with a literal first character, so it runs at ~1 GB/s.
    """
    starts: set[int] = set()
    if any(op(data) for op in _OP_RES):
        low = data.lower()
        match = _ASSIGN.match
        tries = [k for kw in _KEYWORDS for k in _find_all(low, kw)]
        tries += [j - off for j in _find_all(low, b"key") for off in _KEY_OFFSETS if j >= off]
        starts.update(low.rfind(b"\n", 0, k) + 1 for k in tries if match(low, k))
    for search in _QUOTED_RES:
        m = search(data)
        while m:
            # entropy of the text's own literal: the proxy folds some letters (e.g. U+017F to s)
            if _entropy(text[m.start(1):m.end(1)]) > 4.0:
                starts.add(data.rfind(b"\n", 0, m.start()) + 1)
            m = search(data, m.end() - 1)  # the closing quote may open the next literal
    return starts


def _reference_candidates(text: str) -> set[int]:
    """Line starts of the candidate lines found by :data:`_CANDIDATE` (any text)."""
    starts = set()
    for m in _CANDIDATE.finditer(text):
        literal = m.group(1)
        if literal is not None and _entropy(literal) <= 4.0:
            continue
        starts.add(text.rfind("\n", 0, m.start()) + 1)
    return starts


def scrub(text: str) -> tuple[str, int]:
    """Return ``text`` with every secret found replaced by :data:`PLACEHOLDER`, and the count."""
    data = _proxy(text)
    if "PRIVATE KEY" not in text and not _may_hold_token(data):
        return _redact_lines(text, _fast_candidates(data, text), 0)
    count = 0
    if "PRIVATE KEY" in text:
        text, n = _PRIVATE_KEY.subn(
            lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY-----\n{PLACEHOLDER}\n-----END {m.group(1)}PRIVATE KEY-----",
            text)
        count += n
    text, n = _TOKENS.subn(PLACEHOLDER, text)
    return _redact_lines(text, _reference_candidates(text), count + n)


def _redact_lines(text: str, starts: set[int], count: int) -> tuple[str, int]:
    """Let detect-secrets judge the lines starting at ``starts``; redact what it reports."""
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
