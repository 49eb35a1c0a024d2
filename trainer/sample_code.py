"""A deterministic generator of a small "internal" codebase.

It stands in for a company's private code in the demo, the tests and the benchmarks: the
files use a made-up in-house API (``acme.billing``, ``AcmeClient`` …) that no public model
knows, with enough regularity that a tiny model visibly learns it in a few dozen steps.
Everything is a pure function of ``seed`` so two runs produce byte-identical trees.
"""

from __future__ import annotations

import random
from pathlib import Path

_NOUNS = ["invoice", "customer", "ledger", "payment", "refund", "order", "account",
          "report", "shipment", "coupon", "quota", "tenant", "session", "audit", "ticket"]
_VERBS = ["load", "save", "validate", "render", "sync", "archive", "reconcile", "export",
          "import", "notify", "resolve", "schedule", "compute", "publish", "lock"]


def _py_module(rng: random.Random, idx: int) -> str:
    noun = rng.choice(_NOUNS)
    lines = [
        f'"""Acme {noun} helpers (module {idx})."""',
        "",
        "from acme.core import AcmeClient, AcmeError",
        f"from acme.billing import {noun.capitalize()}Store",
        "",
        "",
    ]
    for _ in range(rng.randint(2, 5)):
        verb = rng.choice(_VERBS)
        other = rng.choice(_NOUNS)
        lines += [
            f"def {verb}_{noun}_{other}(client: AcmeClient, {noun}_id: int) -> dict:",
            f'    """{verb.capitalize()} the {other} of a {noun}."""',
            f"    store = {noun.capitalize()}Store(client, tenant=client.tenant)",
            f"    record = store.get({noun}_id)",
            "    if record is None:",
            f'        raise AcmeError("{noun} %d not found" % {noun}_id)',
            f'    record["{other}"] = client.{verb}("{other}", record["id"])',
            "    store.put(record)",
            "    return record",
            "",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _js_module(rng: random.Random, idx: int) -> str:
    noun = rng.choice(_NOUNS)
    lines = [f"// Acme {noun} widgets ({idx})", "import { acmeFetch } from '@acme/http';", ""]
    for _ in range(rng.randint(2, 4)):
        verb = rng.choice(_VERBS)
        lines += [
            f"export async function {verb}{noun.capitalize()}(id) {{",
            f"  const res = await acmeFetch(`/api/{noun}s/${{id}}/{verb}`);",
            "  if (!res.ok) {",
            f"    throw new Error(`{verb} {noun} failed: ${{res.status}}`);",
            "  }",
            "  return res.json();",
            "}",
            "",
        ]
    return "\n".join(lines)


def _go_module(rng: random.Random, idx: int) -> str:
    noun = rng.choice(_NOUNS)
    verb = rng.choice(_VERBS)
    return (
        f"package {noun}\n\n"
        'import "acme.internal/core"\n\n'
        f"// {verb.capitalize()}{noun.capitalize()} calls the core service ({idx}).\n"
        f"func {verb.capitalize()}{noun.capitalize()}(c *core.Client, id int64) error {{\n"
        f'\treturn c.Do("{verb}", "{noun}", id)\n'
        "}\n"
    )


def generate(root: Path, files: int = 40, seed: int = 0) -> list[Path]:
    """Write ``files`` source files under ``root`` and return their paths.

    Roughly 70% Python, 20% JavaScript, 10% Go, spread over a few packages.
    """
    rng = random.Random(seed)
    written: list[Path] = []
    for i in range(files):
        roll = rng.random()
        pkg = rng.choice(_NOUNS)
        if roll < 0.7:
            rel, text = Path("acme") / pkg / f"{rng.choice(_VERBS)}_{i}.py", _py_module(rng, i)
        elif roll < 0.9:
            rel, text = Path("web") / pkg / f"{pkg}{i}.js", _js_module(rng, i)
        else:
            rel, text = Path("services") / pkg / f"{pkg}_{i}.go", _go_module(rng, i)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    (root / "README.md").write_text("# acme-internal\n\nSample internal codebase.\n", encoding="utf-8")
    written.append(root / "README.md")
    return written
