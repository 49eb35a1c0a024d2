"""``repotune corpus …``: build, update, inspect and export a repository's training corpus."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bot.commands._common import home_option, progress_bar, resolve_home


@click.group("corpus")
def corpus() -> None:
    """Build and update training corpora from git repositories."""


def _print_result(result) -> None:
    click.echo(f"{result.name}: {'full build' if result.full else 'update'} at {result.commit[:12]} "
               f"(version {result.version}): +{result.added} ~{result.modified} -{result.deleted}; "
               f"{result.train_files} train / {result.heldout_files} held-out files, "
               f"{result.bytes / 1e6:.2f} MB, {result.secrets_redacted} secrets redacted, "
               f"{len(result.shards_touched)} shards written in {result.duration_s:.2f}s")


@corpus.command("build")
@click.argument("source")
@click.option("--name", help="Corpus name (default: derived from the URL or path).")
@click.option("--branch", default=None, help="Branch to track (default: the remote's default branch).")
@click.option("--shards", "num_shards", type=int, default=8, show_default=True, help="Shards per split.")
@home_option
def build(source: str, name: str | None, branch: str | None, num_shards: int, home: Path | None) -> None:
    """Mirror SOURCE (clone URL or local path) and build its corpus from scratch."""
    from trainer.corpus import CorpusSpec, name_from_url, update

    spec = CorpusSpec(name=name or name_from_url(source), url=source, branch=branch, num_shards=num_shards)
    with progress_bar(f"corpus {spec.name}") as bar:
        result = update(spec, resolve_home(home), full=True, progress=bar)
    _print_result(result)


@corpus.command("update")
@click.argument("name")
@click.option("--to", "to_rev", default=None, help="Revision to ingest (default: the branch head).")
@click.option("--full", is_flag=True, help="Rebuild everything (e.g. after a corrupt shard).")
@home_option
def update_cmd(name: str, to_rev: str | None, full: bool, home: Path | None) -> None:
    """Fetch and apply the changes since the last ingested commit."""
    from trainer.corpus import load_spec, update

    home_dir = resolve_home(home)
    with progress_bar(f"corpus {name}") as bar:
        result = update(load_spec(home_dir, name), home_dir, to_rev, full=full, progress=bar)
    _print_result(result)


@corpus.command("stats")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print corpus.json instead of a table.")
@home_option
def stats_cmd(name: str, as_json: bool, home: Path | None) -> None:
    """Show a corpus's summary."""
    from trainer.corpus import stats

    data = stats(resolve_home(home), name)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("corpus", data["name"]), ("source", data["url"]), ("commit", data["commit"]),
            ("previous commit", data.get("previous_commit") or "-"), ("version", data["version"]),
            ("train files", data["train_files"]), ("held-out files", data["heldout_files"]),
            ("bytes", f"{data['bytes']:,}"), ("secrets redacted", data["secrets_redacted"]),
            ("skipped files", data["skipped_files"])]
    rows += [(f"  {reason}", n) for reason, n in sorted(data["skipped"].items())]
    rows += [("languages", ", ".join(f"{k} {v}" for k, v in list(data["languages"].items())[:8]) or "-"),
             ("shards", len(data["shards"])), ("updated", data["updated_at"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


@corpus.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one corpus.json summary per corpus.")
@home_option
def list_cmd(as_json: bool, home: Path | None) -> None:
    """The corpora under --home: name, version, commit, files (train + held-out) and size."""
    # Once a corpus is retired (its branch was deleted, so runs leave it out), a RETIRED column.
    from bot.recipe import retirement
    from trainer.corpus import stats
    from trainer.errors import CorpusError

    root = resolve_home(home) / "corpus"
    names = sorted(p.name for p in root.iterdir() if (p / "manifest.sqlite").is_file()) if root.is_dir() else []
    summaries: dict[str, dict | None] = {}
    for name in names:
        try:
            summaries[name] = stats(root.parent, name)
        except CorpusError:  # mirrored, but no update has completed yet
            summaries[name] = None
    # Retired (the bot's marker, see docs/corpus.md): its branch was deleted; kept, not trained on.
    retired = {name for name in names if retirement(root.parent, name) is not None}
    if as_json:
        for name in retired:
            if summaries[name] is not None:
                summaries[name] = dict(summaries[name], retired=True)
        click.echo(json.dumps(summaries, indent=2))
        return
    if not summaries:
        click.echo(f"no corpora under {root}; build one with `repotune corpus build <url-or-path> --name NAME`")
        return
    rows: list[tuple[str, ...]] = [("NAME", "VERSION", "COMMIT", "FILES", "SIZE")]
    for name, data in summaries.items():
        if data is None:
            rows.append((name, "-", "not built yet", "-", "-"))
            continue
        rows.append((name, str(data["version"]), str(data["commit"])[:12],
                     str(data["train_files"] + data["heldout_files"]), _size(data["bytes"])))
    if retired:  # the column appears once a corpus is retired
        rows = [rows[0] + ("RETIRED",)] + [row + ("yes" if row[0] in retired else "no",) for row in rows[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@corpus.command("export")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL file to write ({\"text\", \"url\"} per line).")
@click.option("--split", type=click.Choice(["train", "heldout"]), default="train", show_default=True)
@home_option
def export_cmd(name: str, out: Path, split: str, home: Path | None) -> None:
    """Export a split as plain JSONL for run_clm.py --train_file."""
    from trainer.corpus import export

    n = export(resolve_home(home), name, out, split=split)
    click.echo(f"wrote {n} records to {out}")


COMMANDS = [corpus]
