"""``repotune eval``: score a checkpoint on a corpus's held-out code, optionally against another."""

from __future__ import annotations

from pathlib import Path

import click

from bot.commands._common import home_option, progress_bar, resolve_home


def _heldout(home: Path, corpus: str) -> tuple[list[dict], str]:
    """Held-out records and the corpus version that seeds the task draw."""
    from trainer.corpus import read_records, shard_files, stats

    version = str(stats(home, corpus).get("version", ""))
    records = list(read_records(shard_files(home, corpus, "heldout")))
    return records, version


@click.command("eval")
@click.option("--model", "model", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint folder to evaluate (weights + tokenizer), e.g. runs/<id>/checkpoint.")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint to compare against (the model now serving); adds deltas, intervals, gate.")
@click.option("--corpus", "corpus", required=True, help="Corpus name whose held-out split to use.")
@click.option("--tasks", "num_tasks", type=click.IntRange(min=1), default=200, show_default=True,
              help="Completion tasks to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the task draw and bootstrap.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice; 1 is fastest for tiny models on busy machines).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write eval.json and report.md into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json instead of the Markdown report.")
@home_option
def eval_cmd(model: Path, baseline: Path | None, corpus: str, num_tasks: int, seed: int, device: str,
             threads: int | None, out_dir: Path | None, as_json: bool, home: Path | None) -> None:
    """Score MODEL on held-out completion tasks of CORPUS (and compare with --baseline).

    With --baseline the promotion gate is applied and its verdict printed; the exit status is
    0 either way (read "gate.passed" from --json output in scripts).
    """
    from trainer.evaluate import EvalConfig, compare
    from trainer.evaluate.report import render_markdown, to_json

    home_dir = resolve_home(home)
    records, version = _heldout(home_dir, corpus)
    if not records:
        raise click.ClickException(
            f"corpus {corpus!r} has no held-out files; update it (`repotune corpus update {corpus}`) "
            "or raise its heldout_fraction")
    cfg = EvalConfig(num_tasks=num_tasks, seed=seed, device=device, num_threads=threads)
    with progress_bar("eval") as bar:
        result = compare(model, baseline, records, cfg, corpus_version=version, out_dir=out_dir, progress=bar)
    click.echo(to_json(result) if as_json else render_markdown(result))
    if out_dir is not None and not as_json:
        click.echo(f"Wrote {out_dir / 'eval.json'} and {out_dir / 'report.md'}", err=True)


COMMANDS = [eval_cmd]
