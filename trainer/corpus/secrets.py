"""Secret scrubbing: a cheap prefilter finds candidate lines; precise rules and detect-secrets redact.

Why this shape: detect-secrets judges a line in ~1 ms (all its plugins, in every file type's
keyword mode), far too slow for every line of a corpus, and the old prefilter (a keyword assigned
a *quoted* literal, or a long quoted literal) missed unquoted YAML/INI/env values, URLs with
passwords, Dockerfile ``ENV`` lines and more. So :func:`scrub`:

1. redacts the body of every PEM block (multi-line, any label) on the whole text;
2. finds candidate lines with literal-led searches only (Python's regex engine scans at GB/s for a
   pattern that starts with one literal character; an alternation or ``(?i)`` runs at ~15-50 MB/s):
   credential words on a lowercased ASCII proxy of the text (:func:`_proxy`), vendor token
   prefixes (``AKIA``, ``ghp_``, ``xox``, ``sk_live_``, ``SG.``, ``AIza``, ``eyJ``, ``AccountKey=``
   …), ``://``, and quoted or ``:``/``=``-assigned runs of hex (>= 9) or base64 (>= 23) characters
   whose entropy passes detect-secrets' limits;
3. on each candidate line (cached by content), applies the precise rules of
   :mod:`trainer.corpus._secret_rules` and, where detect-secrets could flag the line at all,
   :func:`trainer.corpus._secret_reference.judge_line`; each reported value becomes
   :data:`PLACEHOLDER`, the key stays (``password: <SECRET>``).

Recall is measured, not assumed: tests/test_secrets_recall.py checks on a labelled benchmark that
every line detect-secrets flags (run on that line alone, as ``detect-secrets scan`` would on a file
of its type) is redacted, and a property test checks that the prefilter selects every line
:func:`judge_line` flags. Pure functions of the text.
"""

from __future__ import annotations

import codecs
import functools
import math
import re
from collections import Counter

from trainer.corpus import _secret_rules as rules
from trainer.corpus._secret_reference import judge_line
from trainer.corpus._secret_rules import PLACEHOLDER

__all__ = ["PLACEHOLDER", "scrub"]

DIGEST_PREFIXES = ("sha1-", "sha256-", "sha384-", "sha512-", "sha256:", "sha512:")
"""Values detect-secrets reports for their entropy that are content digests (lock files, Subresource
Integrity), not credentials: never redacted, a deliberate difference from the reference."""

MAX_LINE = 4000
"""Longer lines (minified code, data blobs) get the precise rules only, not detect-secrets."""

# --------------------------------------------------------------------------- the proxy
# Non-ASCII characters that (?i) equates with an ASCII letter (all of them: see the tests).
_FOLDS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}


def _proxy_chars(err: UnicodeEncodeError) -> tuple[str, int]:
    """Stand-ins for non-ASCII characters: a folded letter, ``a`` for any other word character,
    a space for whitespace, ``?`` for the rest, so that keyword searches on the proxy find every
    place a case-insensitive keyword matches the text (and sometimes more)."""
    run = err.object[err.start:err.end]
    out = [_FOLDS.get(c) or ("a" if c.isalnum() else " " if c.isspace() else "?") for c in run]
    return "".join(out), err.end


codecs.register_error("repotune-secrets-proxy", _proxy_chars)


def _proxy(text: str) -> bytes:
    """One ASCII byte per character of ``text`` (itself, if ASCII), same offsets."""
    return text.encode("ascii", "repotune-secrets-proxy")


# --------------------------------------------------------------------------- prefilter
# Each pattern below is one pass over the text; the count of passes is the scanner's cost
# (~2-4 us per 4 KB file each), so related hints share a pass behind one literal first byte.
# Credential words, on the lowercased proxy, one ``bytes.find`` pass each (~1-4 GB/s; an
# alternation of them runs at ~90 MB/s). "key" counts only inside a compound name (api_key,
# privatekey, cl-key …).
_WORDS = (b"pass", b"pwd", b"secret", b"token", b"auth", b"cred", b"key", b"aws", b"xox", b"://", b"contrase")
# detect-secrets' keyword plugin only fires on these (its DENYLIST, and the vendor plugins'
# prefixes): a word-hit line goes to detect-secrets only if it holds one.
_DS_WORDS = frozenset((b"pwd", b"secret", b"contrase", b"aws", b"xox", b"://", b"auth"))
_DS_KEY_PREFIXES = tuple(p + s for p in (b"api", b"auth", b"service", b"account", b"db", b"database",
                                         b"priv", b"private", b"client") for s in (b"", b"_"))
_DS_PASS_PREFIXES = (b"db", b"db_", b"database", b"database_", b"key", b"key_")
# After a credential word, the rest of a name, an operator and a literal-looking value: a
# word-hit line without it (``token_cache = load(x)``) can only matter to detect-secrets.
_WORD_ASSIGN = re.compile(
    rb"[a-z0-9_.\-]*+[\"'\]]{0,2}[ \t]*(?::=|=>|==|[:=]|[ \t])[ \t]*+"
    rb"(?:[\"'`][^\"'`\s]{4}|[^\s\"'`(\[]{4,}+(?:[\s,;)}\]]|$))").match
# Vendor token prefixes, case-sensitive on the proxy, each led by one literal byte.
_HINT_RES = tuple(re.compile(p).search for p in (
    rb"A(?:KIA|SIA|BIA|CCA|3T|GPA|IDA|ROA|NPA|NVA|IPA|Iza|KC|ccountKey=|C[a-z0-9]{32}|P[0-9A-F][a-zA-Z0-9]{8})",
    rb"S(?:G\.|K[a-z0-9]{32}|haredAccess)",                    # SendGrid, Twilio, Azure
    rb"g(?:h[pousr]_|ithub_pat_|l[a-z]{2,6}-)",                 # GitHub, GitLab
    rb"s(?:k-[A-Za-z0-9_\-]{20}|q0[a-z]{3}-|ig=)",              # OpenAI-style, Square, Azure SAS
    rb"k_(?:live|test)_",                                       # Stripe
    rb"eyJ", rb"pypi-", rb"GR1348941", rb"PuTTY",               # JWT, PyPI, GitLab runner, PuTTY
    rb"-us[0-9]",                                               # Mailchimp
    rb"\.[a-zA-Z0-9_\-]{6}\.[a-zA-Z0-9_\-]{27}",                # Discord
    rb":[0-9A-Za-z_\-]{35}",                                    # Telegram
))
_B64 = rb"[A-Za-z0-9+/=_\-]{23,}"
_HEXRUN = rb"[0-9a-fA-F]{9,}"
_HEX = set("0123456789abcdefABCDEF")
# The only shapes detect-secrets' entropy plugins can report: a quoted literal, or a value after
# ':' / '=' (what its YAML/INI transformers quote), of >= 9 hex or >= 23 base64 characters.
_RUN_RES = tuple(re.compile(lead + rb"(" + _HEXRUN + rb"|" + _B64 + rb")" + tail).search
                 for lead, tail in ((b"'", b"'"), (b'"', b'"'), (rb":[ \t]*", rb"(?![^'\" \t\r\n,;}\]#])"),
                                    (rb"=[ \t]*", rb"(?![^'\" \t\r\n,;}\]#])")))
_KEY_PREFIX_END = frozenset(b"abcdefghijklmnopqrstuvwxyz_-")


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _high_entropy(value: str) -> bool:
    """Could detect-secrets' Hex (> 3.0 bits, any length) or Base64 (> 4.5) plugin report it?"""
    if len(value) >= 9 and set(value) <= _HEX and _entropy(value) > 3.0:
        return True
    return len(value) >= 23 and _entropy(value) > 4.5


def _line_start(data: bytes, pos: int) -> int:
    return data.rfind(b"\n", 0, pos) + 1


def _line_end(data: bytes, pos: int) -> int:
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


def _judged(low: bytes, k: int, word: bytes) -> bool | None:
    """Whether a hit of ``word`` at ``k`` can matter to detect-secrets (its keyword DENYLIST, its
    URL and vendor plugins); None for a bare "key", which matters to no rule."""
    if word in _DS_WORDS:
        return True
    if word == b"pass":
        return low.startswith(b"passw", k) or any(low.endswith(p, 0, k) for p in _DS_PASS_PREFIXES)
    if word == b"key":
        if k == 0 or low[k - 1] not in _KEY_PREFIX_END:
            return None
        return any(low.endswith(p, 0, k) for p in _DS_KEY_PREFIXES)
    return False


def _candidates(data: bytes, text: str) -> dict[int, bool]:
    """Candidate line starts of ``text`` (``data`` is its proxy), each with whether detect-secrets
    must judge it (else only the precise rules run). After a hit the search resumes at the end
    of its line: one hit is enough."""
    low = data.lower()
    found: dict[int, bool] = {}
    for word in _WORDS:
        k = low.find(word)
        while k >= 0:
            judge = _judged(low, k, word)
            if judge is None:  # "key" alone, not a compound name
                k = low.find(word, k + 3)
                continue
            start, end = _line_start(data, k), _line_end(data, k)
            if judge:
                found[start] = True
                k = low.find(word, end)
                continue
            if _WORD_ASSIGN(low, k + len(word), end):
                found.setdefault(start, False)
            k = low.find(word, k + len(word))
    for search in _HINT_RES:
        m = search(data)
        while m:
            end = _line_end(data, m.start())
            found[_line_start(data, m.start())] = True
            m = search(data, end)
    for search in _RUN_RES:
        m = search(data)
        while m:
            if _high_entropy(text[m.start(1):m.end(1)]):
                found[_line_start(data, m.start())] = True
                m = search(data, _line_end(data, m.start()))
            else:
                m = search(data, m.end(1))
    return found


# --------------------------------------------------------------------------- redaction
_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.\-]*[=:]([^=/].*)$")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@functools.lru_cache(maxsize=16384)
def _redact_line(line: str, judge: bool) -> tuple[str, int]:
    """One candidate line with its secret values replaced, and how many (pure, so cached)."""
    spans = rules.rule_values(line, _proxy(line).lower().decode("ascii"), tokens=judge)
    if judge and len(line) <= MAX_LINE:
        for value in judge_line(line):
            if value.startswith(DIGEST_PREFIXES) or value.startswith("BEGIN "):
                continue  # a content digest, or a PEM armour line (its body is already redacted)
            m = _KEY_VALUE.match(value)  # an unquoted `KEY=value` reported whole: keep the key
            value = m.group(1) if m else value
            i = line.find(value)
            while i >= 0:
                spans.append((i, i + len(value)))
                i = line.find(value, i + len(value))
    merged = _merge(spans)
    if not merged:
        return line, 0
    pieces, last = [], 0
    for a, b in merged:
        pieces += [line[last:a], PLACEHOLDER]
        last = b
    pieces.append(line[last:])
    return "".join(pieces), len(merged)


def scrub(text: str) -> tuple[str, int]:
    """Return ``text`` with every secret found replaced by :data:`PLACEHOLDER`, and the count."""
    text, count = rules.redact_pem(text)
    data = _proxy(text)
    found = _candidates(data, text)
    if not found:
        return text, count
    pieces, last = [], 0
    for start in sorted(found):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        new, n = _redact_line(text[start:end], found[start])
        if n:
            pieces += [text[last:start], new]
            last = end
            count += n
    if not pieces:
        return text, count
    pieces.append(text[last:])
    return "".join(pieces), count
