"""bot.reporting: commit statuses on the local forge as a run moves, and never an exception."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.config import GitHubSettings, GitLabSettings, RepoConfig, Settings
from bot.reporting import EVAL_CONTEXT, TRAIN_CONTEXT, on_run_transition, statuses_for
from bot.runs import RunStatus, new_run, transition
from tests.fixtures.forge import GITHUB_TOKEN, GITLAB_TOKEN, LocalForge

SHA = "b" * 40


def _settings(forge: LocalForge, home: Path, status_url: str | None = "http://status.test/") -> Settings:
    return Settings(
        home=home, status_page_url=status_url,
        github=GitHubSettings(api_url=forge.github_api_url, token=GITHUB_TOKEN),
        gitlab=GitLabSettings(url=forge.gitlab_url, token=GITLAB_TOKEN),
        repos=[RepoConfig(name="web", url="file:///dev/null", forge="github", full_name="acme/web")],
    )


def _walk(settings: Settings, run, *steps, **changes):
    for status in steps:
        transition(run, status)
        for k, v in changes.pop(status, {}).items():
            setattr(run, k, v)
        on_run_transition(settings, run)


def test_github_push_run_that_ends_serving(local_forge: LocalForge, tmp_path: Path):
    local_forge.add_github_repo("acme/web")
    settings = _settings(local_forge, tmp_path)
    run = new_run(repo="web", trigger={"kind": "push", "forge": "github", "repo": "acme/web",
                                       "commit": SHA})
    on_run_transition(settings, run)
    _walk(settings, run, "ingesting", "training", "evaluating", "converting", "publishing",
          "serving", evaluating={"metrics": {"steps": 40, "heldout_loss": 1.23456}},
          serving={"version": 4})
    got = [(s["context"], s["state"], s["description"]) for s in
           local_forge.github_repos["acme/web"].statuses]
    assert got == [
        (TRAIN_CONTEXT, "pending", "queued"),
        (TRAIN_CONTEXT, "pending", "updating the corpus"),
        (TRAIN_CONTEXT, "pending", "training"),
        (TRAIN_CONTEXT, "success", "trained, 40 steps, loss 1.2346"),
        (EVAL_CONTEXT, "pending", "evaluating against the serving model"),
        (EVAL_CONTEXT, "success", "passed the gate; converting"),
        (EVAL_CONTEXT, "success", "passed the gate; publishing"),
        (EVAL_CONTEXT, "success", "passed; serving as version 4"),
    ]
    urls = {s["target_url"] for s in local_forge.github_repos["acme/web"].statuses}
    assert urls == {f"http://status.test/runs/{run.id}"}


def test_gitlab_push_run_rejected_and_failed(local_forge: LocalForge, tmp_path: Path):
    proj = local_forge.add_gitlab_project("acme/web", 42)
    settings = _settings(local_forge, tmp_path, status_url=None)
    run = new_run(repo="web", trigger={"kind": "push", "forge": "gitlab", "repo": "acme/web",
                                       "commit": SHA})
    on_run_transition(settings, run)
    _walk(settings, run, "ingesting", "training", "evaluating", "rejected",
          rejected={"error": "edit_similarity 0.41 < 0.43 + margin"})
    got = [(s["name"], s["status"], s["description"]) for s in proj.statuses]
    # GitLab refuses pending→pending, so the repeated "pending" steps are recorded once.
    assert got == [
        (TRAIN_CONTEXT, "pending", "queued"),
        (TRAIN_CONTEXT, "success", "trained"),
        (EVAL_CONTEXT, "pending", "evaluating against the serving model"),
        (EVAL_CONTEXT, "failed", "rejected: edit_similarity 0.41 < 0.43 + margin"),
    ]
    assert all(s["target_url"] is None for s in proj.statuses)

    failing = new_run(repo="web", trigger={"kind": "push", "forge": "gitlab", "repo": "acme/web",
                                           "commit": "c" * 40})
    _walk(settings, failing, "ingesting", "training", "failed",
          failed={"error": "CUDA out of memory\nat step 3"})
    last = [s for s in proj.statuses if s["sha"] == "c" * 40][-1]
    assert (last["name"], last["status"], last["description"]) == (
        TRAIN_CONTEXT, "failed", "failed: CUDA out of memory at step 3")


def test_where_a_failure_is_reported():
    run = new_run(repo="web", trigger={})
    for step in ("ingesting", "training", "evaluating", "converting"):
        transition(run, step)
    transition(run, RunStatus.FAILED)
    run.error = "triton refused the model"
    assert [(s.context, s.state) for s in statuses_for(run)] == [(EVAL_CONTEXT, "error")]
    assert "converting failed: triton refused" in statuses_for(run)[0].description


def test_never_raises_and_never_logs_the_token(local_forge: LocalForge, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    local_forge.add_github_repo("acme/web")
    settings = _settings(local_forge, tmp_path)
    run = new_run(repo="web", trigger={"kind": "push", "forge": "github", "repo": "acme/web",
                                       "commit": SHA})
    local_forge.fail_next(10, 503)
    on_run_transition(settings, run)  # the forge is down: logged, not raised
    assert "could not set repotune/train" in caplog.text
    local_forge.stop()
    on_run_transition(settings, run)  # the forge is gone entirely
    on_run_transition(settings, object())  # not even a run
    no_token = Settings(home=tmp_path, github=GitHubSettings(api_url=local_forge.github_api_url))
    on_run_transition(no_token, run)  # misconfigured: ConfigError is logged
    assert "REPOTUNE_GITHUB_TOKEN" in caplog.text
    assert GITHUB_TOKEN not in caplog.text


def test_chatops_run_comments_when_it_ends(local_forge: LocalForge, tmp_path: Path):
    local_forge.add_github_repo("acme/web", pulls=(7,))
    settings = _settings(local_forge, tmp_path)
    run = new_run(repo="web", trigger={"kind": "chatops", "forge": "github", "repo": "acme/web",
                                       "number": 7, "requested_by": "alice"})
    _walk(settings, run, "training", "evaluating")
    assert local_forge.github_comments("acme/web", 7) == []  # nothing until it ends
    assert local_forge.github_repos["acme/web"].statuses == []  # no commit: no statuses
    _walk(settings, run, "rejected", rejected={"error": "worse than serving"})
    (comment,) = local_forge.github_comments("acme/web", 7)
    assert f"run `{run.id}`: rejected" in comment and "worse than serving" in comment
    assert f"(http://status.test/runs/{run.id})" in comment


@pytest.mark.parametrize("trigger", [{"kind": "reconcile"}, {"kind": "push", "forge": "local",
                                                              "repo": "x", "commit": SHA}])
def test_runs_without_a_forge_are_left_alone(local_forge: LocalForge, tmp_path: Path, trigger):
    settings = _settings(local_forge, tmp_path)
    on_run_transition(settings, new_run(repo="web", trigger=trigger))
    assert local_forge.calls == []
