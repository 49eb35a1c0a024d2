"""The secrets prefilter selects every line detect-secrets would flag, and redaction keeps keys."""

from __future__ import annotations

import re
import string
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.corpus import secrets
from trainer.corpus._secret_reference import judge_line
from trainer.corpus.secrets import PLACEHOLDER, scrub

FRAGMENTS = [
    "password", "PassWD", "pass", "pwd", "SECRET", "token", "Auth", "credential", "api_key", "Api-Key",
    "apikey", "ACCESS_KEY", "private_key", "PRIVATEKEY", "db_pass", "key", "aws", "pa\u017f\u017fword",
    "\u212aey", "\u0130", "=", ":", ":=", "=>", "==", " = ", ": ", " ", "\t", "\n", "\r\n", "\u00a0",
    "'", '"', "`", "]", "[", "(", ")", ";", "_", "-", "- ", "export ", "ENV ", "abcdef", "hunter2hunter2",
    "Zx9Yw8Vu7TqR2sL5nM3bKp0", "aGVsbG8gd29ybGQhIGhlbGxvIHdvcmxkIQ==", "3f2a9c1d8e", "a1b2c3d4e5f6a7b8",
    "0123456789", "\u00e9", "\u2192", "x", "0", "/", "+", ".", "@", "://", "postgres://u:", "@h/db",
    "AKIA", "ghp_", "sk-", "eyJ", "xoxb-", "sk_live_", "SG.", "AIza", "AccountKey=", "npm_", "pypi-",
    "-----BEGIN RSA PRIVATE KEY-----", "Bearer ", "${VAR}", "<your-token>",
]
parts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(parts=parts)
def test_prefilter_selects_every_line_detect_secrets_flags(parts):
    """The fast path's recall against the slow reference (detect-secrets on every line, in every
    file type's keyword mode): a flagged line must be a candidate sent to detect-secrets."""
    text = "".join(parts)
    text, _ = secrets.rules.redact_pem(text)
    data = secrets._proxy(text)
    assert len(data) == len(text)
    found = secrets._candidates(data, text)
    start = 0
    for line in text.split("\n"):
        values = [v for v in judge_line(line) if not v.startswith(secrets.DIGEST_PREFIXES + ("BEGIN ",))]
        if values and len(line) <= secrets.MAX_LINE:
            assert found.get(start) is True, (line, values)
        start += len(line) + 1


def test_case_folds_to_ascii_letters_are_all_known():
    """Every non-ASCII character that (?i) equates with an ASCII letter is in _FOLDS."""
    letter = re.compile("(?i)[a-z]")
    found = {chr(cp) for cp in range(0x80, sys.maxunicode + 1) if letter.fullmatch(chr(cp))}
    assert found == set(secrets._FOLDS)
    for c, low in secrets._FOLDS.items():
        assert low in string.ascii_lowercase and re.fullmatch(f"(?i){low}", c)


def test_non_ascii_lines_are_scrubbed_too():
    """A keyword value and a high-entropy literal (> 4.5 bits/char, detect-secrets' limit) go."""
    text = ('# Konfiguration f\u00fcr den Dienst \u2192 bitte nicht \u00e4ndern\n'
            'DB_PASSWORD = "s3cr3t-\u00fcber-geheim-9f8e7d"\n'
            'Schl\u00fcssel = "Zx9Yw8Vu7TqR2sL5nM3bKp0jH6gF"\n'
            'gr\u00fc\u00dfe = "hallo welt"\n')
    out, count = scrub(text)
    assert count >= 2 and out.count(PLACEHOLDER) >= 2
    assert "s3cr3t" not in out and "geheim-9f8e7d" not in out and "Zx9Yw8Vu7TqR" not in out
    assert 'gr\u00fc\u00dfe = "hallo welt"\n' in out and out.startswith("# Konfiguration f\u00fcr")


def test_pem_block_body_is_redacted_on_every_line():
    body = ["MIIEowIBAAKCAQEAx8fLm2vF0q1q0Zb9", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9u", "Zq1Rt=="]
    text = "key = '''\n-----BEGIN EC PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END EC PRIVATE KEY-----\n'''\nx = 1\n"
    out, count = scrub(text)
    assert count == 1 and not any(b in out for b in body)
    assert "-----BEGIN EC PRIVATE KEY-----\n<SECRET>\n-----END EC PRIVATE KEY-----" in out and out.endswith("x = 1\n")


def test_values_go_and_keys_stay():
    cases = {
        "password: hunter2x9": "password: <SECRET>",
        "export DB_PASSWORD=Xk2n9Lq4Rt": "export DB_PASSWORD=<SECRET>",
        "ENV API_TOKEN=abc123def456ghi789": "ENV API_TOKEN=<SECRET>",
        "  - POSTGRES_PASSWORD=Sup3rS3cret": "  - POSTGRES_PASSWORD=<SECRET>",
        "DATABASE_URL=postgres://app:Pa55w0rd@db:5432/app": "DATABASE_URL=postgres://app:<SECRET>@db:5432/app",
        "url: redis://:Pa55w0rd@redis:6379/0": "url: redis://:<SECRET>@redis:6379/0",
        "machine h.io login bob password s3cretpw": "machine h.io login bob password <SECRET>",
        "//registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz0123456789":
            "//registry.npmjs.org/:_authToken=<SECRET>",
    }
    for line, want in cases.items():
        assert scrub(line + "\n") == (want + "\n", 1), line


def test_references_and_code_stay():
    for line in ("password: ${DB_PASSWORD}", "api_key = os.environ['API_KEY']", "token = get_token()",
                 "const ordersToken = await refreshToken(session.audit);", "api_key: <your-api-key>",
                 "for key, value in items.items():", "password_file = /run/secrets/db", "tokenizer = 'gpt2'",
                 '  "integrity": "sha512-' + "Qm9yZWRvbWlzYWJvcmluZ3NvbmdpbnRoZW1vcm5pbmcxMjM0NTY3ODk=" + '",'):
        assert scrub(line + "\n") == (line + "\n", 0), line
    assert scrub(scrub("password: hunter2x9\n")[0]) == ("password: <SECRET>\n", 0)  # idempotent


def test_prefilter_passes_are_literal_led_and_markers_known():
    """Speed rests on each pass starting with one literal byte (the regex engine then skips to it
    at ~1 GB/s; a leading class or alternation steps through every byte at ~15-90 MB/s), and on
    every alternative ending in a marker :func:`secrets._candidates` understands."""
    for lead, finditer in secrets._LOW_PASSES + secrets._DATA_PASSES:
        pattern = finditer.__self__
        assert re.sub(rb"\\(.)", rb"\1", pattern.pattern.split(b"(?:", 1)[0]) == lead, pattern.pattern[:40]
        assert pattern.groupindex and all(name[:2] in ("j_", "c_", "v_", "r_") or name == "run"
                                          for name in pattern.groupindex), pattern.groupindex
        assert all(name in secrets._EXACT for name in pattern.groupindex if name.startswith("v_"))


def test_vendor_prefixes_seen_lowercased_are_confirmed_case_sensitively():
    """A prefix found on the lowercased text counts only in its real case (as before the merge)."""
    for line, want in (("note sk_live_ here", {0: True}), ("note SK_LIVE_ here", {}),
                       ("x sk-" + "a1B2" * 6 + " y", {0: True}), ("x SK-" + "a1B2" * 6 + " y", {}),
                       ("see pypi-AgEIcHlwaS5vcmc", {0: True}), ("see PyPI-AgEIcHlwaS5vcmc", {}),
                       ("token_cache = load(x)", {}), ("token = abcdefgh", {0: False}),
                       ("api_key = load(x)", {0: True}), ("sig=abc", {0: True}), ("SIG=abc", {})):
        assert secrets._candidates(secrets._proxy(line), line) == want, line
