"""``repotune eval`` over a real corpus built from a local git repository."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bot.cli import cli


def test_eval_command_compares_on_the_corpus_heldout_split(make_repo, finetuned_tiny, tiny_model, tmp_path):
    from trainer.corpus import CorpusSpec, update

    repo = make_repo(files=40, seed=11)
    home = tmp_path / "home"
    result = update(CorpusSpec(name="acme", url=repo.url, heldout_fraction=0.3), home)
    assert result.heldout_files >= 5
    runner = CliRunner()
    args = ["eval", "--model", str(finetuned_tiny), "--baseline", str(tiny_model), "--corpus", "acme",
            "--tasks", "24", "--device", "cpu", "--threads", "1", "--json", "--home", str(home), "--out", str(tmp_path / "out")]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["corpus_version"] == str(result.version)
    assert data["task_count"] == 24
    assert data["gate"]["passed"] is True, data["gate"]["reasons"]
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["task_count"] == 24

    markdown = runner.invoke(cli, ["eval", "--model", str(finetuned_tiny), "--corpus", "acme", "--tasks", "6",
                                   "--device", "cpu", "--threads", "1", "--home", str(home)])
    assert markdown.exit_code == 0, markdown.output
    assert markdown.stdout.startswith("## RepoTune evaluation") and "| metric | candidate |" in markdown.stdout


def test_eval_command_names_a_missing_corpus(finetuned_tiny, tmp_path):
    done = CliRunner().invoke(cli, ["eval", "--model", str(finetuned_tiny), "--corpus", "nope",
                                    "--home", str(tmp_path)])
    assert done.exit_code == 1
    assert "Error:" in done.output and "nope" in done.output
