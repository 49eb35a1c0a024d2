"""The slow reference for the secrets scanner: detect-secrets on one line, as ``detect-secrets scan``
would judge a file that holds only that line.

:func:`reference_secrets` follows ``detect_secrets.core.scan.scan_file`` step by step (filename
filters, the file-type transformers that quote YAML/INI values, then the eager transformers if
nothing was found, every default plugin and the default filters) without touching the disk. It is
what :mod:`trainer.corpus.secrets` is measured against (tests/test_secrets_recall.py) and what
benchmarks/corpus_bench.py times as "detect-secrets on every line". ``scan_line`` is no reference:
its "eager" mode reports every word of a line without a quoted literal, entropy unchecked.

Also :func:`judge_line`: detect-secrets' verdict on one candidate line *without* a file type (the
corpus scanner sees only text), the union over the keyword rules of every file type and over the
line as written and as a config transformer would quote it. Uses detect-secrets' private scan
helpers (pinned version in pyproject.toml); a change there fails the recall test, not silently.
"""

from __future__ import annotations

import functools
import io
import re

# The keyword plugin picks its assignment rules by extension; these cover every rule set.
_KEYWORD_FILENAMES = ("x.cfg", "x.py", "x.go", "x.c", "x.cpp")
# `key: value` / `key = value` with an unquoted value: what YAML/INI transformers would quote.
_UNQUOTED = re.compile(r"^(\s*(?:-\s+)?(?:export\s+|ENV\s+|set\s+)?[\w.\-\[\]\"'/:@]+?\s*[:=]\s*)"
                       r"([^\s\"'`][^\"'`]*?)\s*$")


class _NamedText(io.StringIO):
    """An in-memory file with a name, which detect-secrets' transformers read like a real one."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


@functools.lru_cache(maxsize=1)
def _scan():
    """detect-secrets configured once per process: every default plugin, the default filters,
    less the on-disk file check (our files are in memory)."""
    from detect_secrets.core import scan
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline, get_settings

    cache_bust()
    configure_settings_from_baseline({"plugins_used": [
        {"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()]})
    get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
    scan.get_filters.cache_clear()
    return scan


def reference_secrets(line: str, filename: str) -> list[str]:
    """Secret values detect-secrets reports for a file named ``filename`` holding only ``line``."""
    from detect_secrets.transformers import get_transformed_file

    scan = _scan()
    if scan._is_filtered_out(required_filter_parameters=["filename"], filename=filename):
        return []
    for eager in (False, True):
        lines = get_transformed_file(_NamedText(line + "\n", filename), use_eager_transformers=eager)
        if lines is None and eager:
            break
        lines = lines or [line + "\n"]
        found = [s.secret_value or "" for s in scan._process_line_based_plugins(
            lines=list(enumerate(lines, start=1)), filename=filename)]
        if found:
            return found
    return []


def _variants(line: str) -> list[str]:
    m = _UNQUOTED.match(line)
    return [line] if not m else [line, f'{m.group(1)}"{m.group(2)}"']


@functools.lru_cache(maxsize=16384)
def judge_line(line: str) -> tuple[str, ...]:
    """Secret values detect-secrets would report on ``line`` in a file of any type (cached: the
    same assignment line recurs across files and versions)."""
    from detect_secrets.plugins.keyword import KeywordDetector
    from detect_secrets.settings import get_plugins
    from detect_secrets.util.code_snippet import get_code_snippet

    scan = _scan()
    found: list[str] = []
    for variant in _variants(line):
        context = get_code_snippet(lines=[variant], line_number=1)
        if scan._is_filtered_out(required_filter_parameters=["line"], filename="x.cfg", line=variant,
                                 context=context):
            continue
        for plugin in get_plugins():
            # Only the keyword plugin depends on the file type: run the others once.
            names = _KEYWORD_FILENAMES if isinstance(plugin, KeywordDetector) else _KEYWORD_FILENAMES[:1]
            for name in names:
                found += [s.secret_value or "" for s in scan._scan_line(
                    plugin=plugin, filename=name, line=variant, line_number=1, context=context)
                    if not scan._is_filtered_out(
                        required_filter_parameters=["context"], filename=name, secret=s.secret_value,
                        plugin=plugin, line=variant, context=context)]
    return tuple(dict.fromkeys(v for v in found if v))
