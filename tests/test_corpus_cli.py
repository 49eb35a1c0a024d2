"""``repotune corpus list`` over corpora built from real git repositories."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli


def test_corpus_list_shows_each_built_corpus(make_repo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    empty = runner.invoke(cli, ["corpus", "list", "--home", str(home)])
    assert empty.exit_code == 0, empty.output
    assert "no corpora under" in empty.output and "repotune corpus build" in empty.output

    for name, files in (("beta", 12), ("alpha", 20)):
        repo = make_repo(files=files, seed=len(name))
        built = runner.invoke(cli, ["corpus", "build", repo.url, "--name", name, "--home", str(home),
                                    "--shards", "2"])
        assert built.exit_code == 0, built.output

    listed = runner.invoke(cli, ["corpus", "list", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert header.split() == ["NAME", "VERSION", "COMMIT", "FILES", "SIZE"]
    assert [row.split()[0] for row in rows] == ["alpha", "beta"]
    as_json = runner.invoke(cli, ["corpus", "list", "--json", "--home", str(home)])
    assert as_json.exit_code == 0, as_json.output
    summaries = json.loads(as_json.output)
    for row in rows:
        name, version, commit, files, *size = row.split()
        data = summaries[name]
        assert version == str(data["version"])
        assert data["commit"].startswith(commit) and len(commit) == 12
        assert int(files) == data["train_files"] + data["heldout_files"] > 0
        assert size[1] in ("B", "KB", "MB") and float(size[0]) > 0
