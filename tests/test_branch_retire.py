"""A tracked branch that is merged and deleted retires its corpus instead of failing every later
run: real git repositories, a real Redis, in-process RQ workers, the real webhook app."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rq.job import Job

from bot import lifecycle, recipe, scheduler
from bot.cli import cli
from bot.runs import RunStatus, load_run
from bot.status import snapshot
from bot.webhook import create_app
from tests.fixtures.bot import github_headers, github_push, gitlab_headers, gitlab_push, work
from trainer import corpus

FEATURE = "hello@feature%2Fx"
A, ZERO = "a" * 40, "0" * 40


def _push_feature(repo, text: str) -> str:
    """Commit ``text`` on feature/x and push it to the stand-in forge; the new head."""
    repo.git("checkout", "-q", "-B", "feature/x")
    repo.write("feature_only.py", text)
    repo.commit("feature work", push=False)
    repo.git("push", "-q", "origin", "HEAD:refs/heads/feature/x")
    head = repo.head()
    repo.git("checkout", "-q", "main")
    return head


def _delete_feature(repo) -> None:
    repo.git("push", "-q", "origin", "--delete", "feature/x")  # the usual merge-and-delete


@pytest.fixture
def tracked(make_repo, bot_settings, redis_conn):
    """A repository tracking ``main`` and ``feature/*``, both ingested (as their pushes would be)."""
    repo = make_repo(files=30, seed=3)
    settings = bot_settings(github_url=repo.url)
    settings.repos[0].branches = ["main", "feature/*"]
    head = _push_feature(repo, "def feature():\n    return 42\n" * 5)
    lifecycle.enqueue_ingest(settings, redis_conn, "hello")
    lifecycle.enqueue_ingest(settings, redis_conn, "hello", "feature/x")
    work(redis_conn, ("ingest",))
    assert corpus.stats(settings.home, FEATURE)["commit"] == head
    assert [branch for _, branch in recipe.corpora(settings)] == ["main", "feature/x"]
    return repo, settings


def _post_github(settings, redis_conn, payload, delivery):
    body = json.dumps(payload).encode()
    return create_app(settings, redis_conn).test_client().post(
        "/webhooks/github", data=body, headers=github_headers("push", body, delivery))


def _assert_retired(settings) -> None:
    assert recipe.retirement(settings.home, FEATURE)["branch"] == "feature/x"
    assert (settings.home / "corpus" / FEATURE / "manifest.sqlite").is_file()  # kept on disk
    assert [branch for _, branch in recipe.corpora(settings)] == ["main"]
    feature_shards = set(corpus.shard_files(settings.home, FEATURE, "train"))
    assert feature_shards and not feature_shards & set(recipe.shards(settings, "train"))


def test_a_run_after_the_branch_was_deleted_retires_it_and_trains_on_the_rest(tracked, redis_conn):
    repo, settings = tracked
    _delete_feature(repo)
    run_id = scheduler.request_training(settings, redis_conn, "hello")
    work(redis_conn, ("ingest",))  # the run's ingest step; its training waits on the gpu queue

    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.INGESTING and run.error is None, run.error
    assert set(run.corpus_version) == {"hello"}
    assert Job.fetch(run.job_id, connection=redis_conn).func_name == "bot.jobs.train_step"  # queued next
    _assert_retired(settings)

    (entry,) = snapshot(settings, redis_conn).to_dict()["repositories"]
    assert entry["retired"] == ["feature/x"]
    listed = CliRunner().invoke(cli, ["corpus", "list", "--home", str(settings.home)])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert header.split()[-1] == "RETIRED"
    assert {row.split()[0]: row.split()[-1] for row in rows} == {"hello": "no", FEATURE: "yes"}


def test_a_github_deletion_push_retires_at_once_and_a_new_push_revives(tracked, redis_conn):
    repo, settings = tracked
    _delete_feature(repo)
    deleted = dict(github_push(A, ZERO, branch="feature/x"), deleted=True)
    resp = _post_github(settings, redis_conn, deleted, "del-1")
    assert resp.status_code == 202, resp.json
    assert resp.json["queued"][0]["kind"] == "retire"
    work(redis_conn, ("ingest",))
    _assert_retired(settings)

    head = _push_feature(repo, "def feature():\n    return 43\n" * 5)  # the branch is back
    resp = _post_github(settings, redis_conn, github_push(A, head, branch="feature/x"), "push-2")
    assert resp.status_code == 202, resp.json
    work(redis_conn, ("ingest",))
    assert recipe.retirement(settings.home, FEATURE) is None
    assert [branch for _, branch in recipe.corpora(settings)] == ["main", "feature/x"]
    assert corpus.stats(settings.home, FEATURE)["commit"] == head

    # A deletion delivered late, after the branch came back, leaves the corpus live.
    resp = _post_github(settings, redis_conn, dict(deleted, before=head), "del-late")
    assert resp.status_code == 202, resp.json
    work(redis_conn, ("ingest",))
    assert recipe.retirement(settings.home, FEATURE) is None


def test_a_gitlab_deletion_push_retires_a_nested_corpus(make_repo, bot_settings, redis_conn):
    repo = make_repo(files=20, seed=5)
    settings = bot_settings(gitlab_url=repo.url)
    settings.repos[0].branches = ["main", "feature/*"]
    _push_feature(repo, "def feature():\n    return 1\n" * 5)
    lifecycle.enqueue_ingest(settings, redis_conn, "acme/web", "feature/x")
    work(redis_conn, ("ingest",))
    _delete_feature(repo)
    body = json.dumps(gitlab_push(A, ZERO, branch="feature/x")).encode()
    resp = create_app(settings, redis_conn).test_client().post(
        "/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "gl-del-1"))
    assert resp.status_code == 202, resp.json
    work(redis_conn, ("ingest",))
    assert recipe.retirement(settings.home, "acme/web@feature%2Fx")["branch"] == "feature/x"
    assert [branch for _, branch in recipe.corpora(settings)] == ["main"]


def test_reconciliation_finds_the_branch_gone_and_retires_it(tracked, redis_conn):
    repo, settings = tracked
    _delete_feature(repo)
    lifecycle.enqueue_reconcile(settings, redis_conn, "hello")
    work(redis_conn, ("ingest",))
    _assert_retired(settings)
