"""The precise secret rules: regexes that find a credential's value and leave its key in place.

:mod:`trainer.corpus.secrets` runs :func:`redact_pem` on the whole text (a key block spans
lines), then :func:`rule_values` on each candidate line its prefilter found. Each rule returns
the *value* spans only, so ``DB_PASSWORD=hunter2x9`` becomes ``DB_PASSWORD=<SECRET>`` and code
stays plausible. These rules cover formats detect-secrets misses on one line (unquoted env and
Dockerfile values, ``ENV API_TOKEN=``, ``.netrc`` logins, ``Authorization: Bearer``, passwords in
URLs, vendor token shapes); detect-secrets' own verdict is added by the caller.
"""

from __future__ import annotations

import re

PLACEHOLDER = "<SECRET>"

# A PEM block of any kind (private keys, encrypted keys, certificates, PGP blocks), its lines
# joined by real newlines or by an escaped "\n" inside a JSON/YAML string. The body goes; the
# BEGIN and END lines stay. An unterminated block is redacted to the end of the text.
PEM = re.compile(
    r"(-----BEGIN (?P<label>[A-Z0-9 ]{1,60})-----)(?P<body>.*?)"
    r"(?P<end>-----END (?P=label)-----|\Z)", re.S)
PUTTY = re.compile(r"(PuTTY-User-Key-File-\d: [^\n]*\n)(.*?)(Private-MAC: [^\n]*|\Z)", re.S)

# Standalone token shapes (vendor prefixes), each a superset of the matching detect-secrets
# plugin where one exists; the whole token is the value.
TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}"  # AWS key id
    r"|gh[pousr]_[A-Za-z0-9_]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"                # GitHub
    r"|(?:glpat|gldt|glft|glsoat|glrt|glcbt|glimt|glptt|glagent|gloas)-[A-Za-z0-9_\-]{20,1024}"
    r"|GR1348941[A-Za-z0-9_\-]{20,50}"                                                # GitLab
    r"|(?i:xox[abposr])-[A-Za-z0-9\-]{8,}"                                           # Slack
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}"                                      # Stripe
    r"|AIza[0-9A-Za-z_\-]{35}"                                                        # Google API
    r"|sk-(?:proj-)?[A-Za-z0-9_\-]{32,}"                                             # OpenAI-style
    r"|SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{30,50}"                              # SendGrid
    r"|(?:AC|SK)[a-z0-9]{32}"                                                         # Twilio
    r"|sq0(?:csp|atp)-[0-9A-Za-z_\-]{22,43}"                                          # Square
    r"|pypi-AgE[A-Za-z0-9_\-]{50,}"                                                   # PyPI
    r"|npm_[A-Za-z0-9]{36}"                                                           # npm
    r"|[0-9a-f]{32}-us[0-9]{1,2}"                                                     # Mailchimp
    r"|AKC[a-zA-Z0-9]{10,}"                                                           # Artifactory
    r"|eyJ[A-Za-z0-9_\-=]{8,}\.[A-Za-z0-9_\-=]{8,}\.?[A-Za-z0-9_\-.+/=]*"             # JWT
    r")")
# These run on the line's lowercased ASCII proxy (same offsets): (?i) costs ~20 us a line.
SLACK_WEBHOOK = re.compile(r"(https://hooks\.slack\.com/(?:services|workflows)/)([a-z0-9_/\-]{10,})")
AZURE = re.compile(r"\b(accountkey|sharedaccesskey|sharedaccesssignature|sig)=([a-z0-9+/%=\-]{16,})")
# user:password@ in any URL; the password may be empty-user (redis://:p@h). Not a ${VAR}.
URL_CREDS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"`]*:([^\s/@'\"`$<{][^\s/@'\"`]*)@")
NETRC = re.compile(r"(?:^|\s)(?:password|passwd)\s+([^\s=:\"'#]+)")
AUTH_HEADER = re.compile(
    r"\b(?:authorization|proxy-authorization)[\"']?\s*[:=,]\s*[\"']?(?:bearer|basic|token|digest)\s+"
    r"([a-z0-9._~+/\-]{8,}=*)|\bbearer\s+([a-z0-9._~+/\-]{20,}=*)")

# A credential-named key assigned a literal. The key is any identifier holding one of these
# words; the value is quoted or runs to whitespace/;/, and must not be a reference.
ASSIGN = re.compile(
    r"(?:pass(?:word|wd)?|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|auth[_\-]?key"
    r"|private[_\-]?key|client[_\-]?key|credentials?|_auth)(?:s|[_.\-][\w.\-]*)?"
    r"[\"'\]]{0,2}\s*(?::=|=>|==|[:=])\s*(?:(?P<q>[\"'`])(?P<qv>[^\"'`\s]*)(?P=q)|(?P<uv>[^\s\"'`,;)}\]]+))")
_KEY_REST = re.compile(r"[\w.\-]*")
# Keys that name something about a credential (where it lives, its type), not the credential.
_META_KEY = re.compile(r"(?i)[_.\-](?:file|path|dir|url|uri|name|type|length|len|size|field|header|prompt"
                       r"|label|id|ttl|expiry|expires|timeout|count|env|var|policy|endpoint|version)s?$")
# Values that are references or placeholders, never secrets.
_NOT_SECRET = re.compile(
    r"(?i)^(?:[$%{<@]|.*\$\{|.*\{\{|\*+$|x{3,}|\.{3}|true$|false$|null$|none$|nil$|undefined$"
    r"|yes$|no$|bearer$|basic$|str$|string$|int$|bool$|boolean$|number$|any$|optional\b|required$|secret$"
    r"|password$|changeme$|redacted$|(?:your|my|example|dummy|test|fake|placeholder)[_\-]"
    r"|os\.|process\.env|env\.|settings\.|config\.|self\.|this\.|args\.|request\.)")
_CODE = re.compile(r"[()\[\]]|^[A-Za-z_]+(?:\.[A-Za-z_]\w+)+$")


def redact_pem(text: str) -> tuple[str, int]:
    """Replace the body of every PEM (and PuTTY) block by the placeholder, keeping its armour."""
    count = 0
    if "-----BEGIN " in text:
        def pem(m: re.Match) -> str:
            body = m.group("body")
            newline = "\\n" if "\\n" in body and "\n" not in body else "\n"
            return f"{m.group(1)}{newline}{PLACEHOLDER}{newline}{m.group('end')}"
        text, count = PEM.subn(pem, text)
    if "PuTTY-User-Key-File" in text:
        text, n = PUTTY.subn(lambda m: f"{m.group(1)}{PLACEHOLDER}\n{m.group(3)}", text)
        count += n
    return text, count


def _literal(value: str) -> bool:
    """True for an assigned value that could be a credential (not a reference, type or call)."""
    return len(value) >= 4 and not _NOT_SECRET.match(value) and not _CODE.search(value)


def _ends_statement(line: str, end: int) -> bool:
    """True if nothing but a comment or a closing mark follows an assigned value: ``key: v  # c``
    is config, ``token = await refresh(x)`` is code."""
    rest = line[end:].lstrip()
    return not rest or rest.startswith(("#", ";", ",", "//", "}", ")", "]", "&", "'", '"', "`", "\\"))


def _key_of(line: str, start: int, matched: str) -> str:
    """The whole key name around an ASSIGN match (which starts at its credential word)."""
    i = start
    while i > 0 and (line[i - 1].isalnum() or line[i - 1] in "_.-"):
        i -= 1
    return line[i:start] + _KEY_REST.match(matched).group(0)


def rule_values(line: str, low: str, tokens: bool = True) -> list[tuple[int, int]]:
    """Spans of secret values in one line, by the precise rules (overlaps allowed). ``low`` is the
    line lowercased, one ASCII character per character of ``line``; ``tokens`` False skips the
    vendor token shapes (the caller saw none of their prefixes)."""
    spans = [m.span() for m in TOKENS.finditer(line)] if tokens else []
    if "hooks.slack" in low:
        spans += [m.span(2) for m in SLACK_WEBHOOK.finditer(low)]
    if "=" in line and ("accountkey" in low or "sharedaccess" in low or "sig=" in low):
        spans += [m.span(2) for m in AZURE.finditer(low)]
    if "://" in line and "@" in line:
        spans += [m.span(1) for m in URL_CREDS.finditer(line)]
    if "passw" in low:
        spans += [m.span(1) for m in NETRC.finditer(low) if _literal(line[m.start(1):m.end(1)])]
    if "auth" in low or "bearer" in low:
        for m in AUTH_HEADER.finditer(low):
            spans.append(m.span(1 if m.group(1) else 2))
    if "=" in line or ":" in line:
        for m in ASSIGN.finditer(low):
            g = "qv" if m.group("q") else "uv"
            value = line[m.start(g):m.end(g)] if m.group(g) else ""
            if not value or not _literal(value) or not _ends_statement(line, m.end(g)):
                continue
            if not _META_KEY.search(_key_of(line, m.start(), m.group(0))):
                spans.append(m.span(g))
    return spans
