"""The fast secrets prefilter finds every candidate line the reference regex finds."""

from __future__ import annotations

import re
import string
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.corpus import secrets
from trainer.corpus.secrets import PLACEHOLDER, scrub

FRAGMENTS = [
    "password", "PassWD", "pass", "SECRET", "token", "Auth", "credential", "api_key", "Api-Key",
    "apikey", "ACCESS_KEY", "access-key", "private_key", "PRIVATEKEY", "key", "pa\u017f\u017fword",
    "\u212aey", "api\u212aey", "\u0130", "\u0131", "=", ":", ":=", "=>", " = ", ": ", " ", "\t", "\n",
    "\r\n", "\x1c", "\x1f", "\x0b", "\u00a0", "\u2028", "\u3000", "'", '"', "`", "]", "[", "_", "-",
    "abcdef", "hunter2hunter2", "Zx9Yw8Vu7TqR2sL5nM3bKp0", "aGVsbG8gd29ybGQhIGhlbGxvIHdvcmxkIQ==",
    "\u00e9", "\u00c9t\u00e9", "\u2192", "\U0001f600", "x", "0", "/", "+", "AKIA", "ghp_", "sk-",
    "eyJ", "xoxb-", "k_live_", "glpat-", "AIza",
]
parts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(parts=parts)
def test_fast_candidates_cover_the_reference(parts):
    text = "".join(parts)
    data = secrets._proxy(text)
    assert len(data) == len(text)
    assert secrets._reference_candidates(text) <= secrets._fast_candidates(data, text)
    if not secrets._may_hold_token(data):
        assert not secrets._TOKENS.search(text)


def test_folded_letters_keep_a_literal_high_entropy():
    """The entropy is taken from the text, not the proxy, where U+017F and s coincide."""
    literal = "s\u017f" + "abcdefghijklmno" * 2  # entropy 4.06 here, 4.0 once U+017F is s
    text = f'x = "{literal}"\n'
    assert secrets._reference_candidates(text) == {0} == secrets._fast_candidates(secrets._proxy(text), text)


def test_case_folds_to_ascii_letters_are_all_known():
    """Every non-ASCII character that (?i) equates with an ASCII letter is in _FOLDS."""
    letter = re.compile("(?i)[a-z]")
    found = {chr(cp) for cp in range(0x80, sys.maxunicode + 1) if letter.fullmatch(chr(cp))}
    assert found == set(secrets._FOLDS)
    for c, low in secrets._FOLDS.items():
        assert low in string.ascii_lowercase and re.fullmatch(f"(?i){low}", c)


def test_non_ascii_lines_are_scrubbed_too():
    text = ('# Konfiguration f\u00fcr den Dienst \u2192 bitte nicht \u00e4ndern\n'
            'DB_PASSWORD = "s3cr3t-\u00fcber-geheim-9f8e7d"\n'
            'Schl\u00fcssel = "Q2hhbmdlTWVQbGVhc2VUb2tlbjEyMzQ1Njc4OTA"\n'
            'gr\u00fc\u00dfe = "hallo welt"\n')
    out, count = scrub(text)
    assert count >= 2 and out.count(PLACEHOLDER) >= 2
    assert "s3cr3t" not in out and "geheim-9f8e7d" not in out and "Q2hhbmdlTWVQ" not in out
    assert 'gr\u00fc\u00dfe = "hallo welt"\n' in out and out.startswith("# Konfiguration f\u00fcr")
