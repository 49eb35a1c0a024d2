"""Push → ingest → scheduler → run, with real git, real Redis, real RQ workers and the real corpus."""

from __future__ import annotations

import json

from rq.job import Job

from bot import scheduler
from bot.lifecycle import ingest_spec
from bot.queue import enqueue, get_queue
from bot.runs import RunStatus, list_runs, load_run
from bot.webhook import create_app
from tests.fixtures.bot import github_headers, github_push, work
from trainer import corpus

ZERO = "0" * 40


def deliver(client, payload: dict, delivery: str):
    body = json.dumps(payload).encode()
    resp = client.post("/webhooks/github", data=body, headers=github_headers("push", body, delivery))
    assert resp.status_code in (200, 202), resp.json
    return resp


def records(home, name: str) -> dict[str, set]:
    return {split: {(r["path"], r["text"]) for r in corpus.read_records(corpus.shard_files(home, name, split))}
            for split in ("train", "heldout")}


def full_build(tmp_path, repo_cfg) -> dict[str, set]:
    other = tmp_path / "fullbuild"
    spec = repo_cfg.corpus_spec()
    corpus.update(spec, other, full=True)
    return records(other, spec.name)


def test_push_ingests_and_a_run_starts_once_the_policy_allows(make_repo, bot_settings, redis_conn, tmp_path):
    repo = make_repo(files=24, seed=3)
    settings = bot_settings(github_url=repo.url, min_changed_files=2, debounce_seconds=60)
    client = create_app(settings, redis_conn).test_client()

    head1 = repo.head()
    deliver(client, github_push(ZERO, head1), "d-1")
    work(redis_conn, ("ingest",))
    assert corpus.stats(settings.home, "hello")["commit"] == head1
    state = scheduler.pending(settings, redis_conn)
    assert state["files"] > 0 and state["pushes"][0]["after"] == head1
    t0 = state["last"]

    assert scheduler.tick(settings, redis_conn, now=t0 + 10)["reason"].startswith("debounce")
    assert list_runs(settings.home) == []
    did = scheduler.tick(settings, redis_conn, now=t0 + 61)
    run = load_run(settings.home, did["run"])
    assert run.status == RunStatus.QUEUED
    assert run.trigger.kind == "push" and run.trigger.commit == head1
    assert run.trigger.pushes[0]["delivery_id"] == "d-1"
    assert scheduler.lock_holder(redis_conn, "codegen") == run.id
    assert scheduler.pending(settings, redis_conn)["files"] == 0

    # A push during the run waits for one follow-up run.
    repo.write("src/extra_module.py", "def extra(x):\n    return x * 2\n" * 20)
    head2 = repo.commit("extra")
    deliver(client, github_push(head1, head2), "d-2")
    work(redis_conn, ("ingest",))  # the push's ingest and the run's ingest step
    assert "holds codegen" in scheduler.tick(settings, redis_conn, now=t0 + 5000)["reason"]

    run = load_run(settings.home, run.id)
    assert run.status == RunStatus.INGESTING
    assert run.corpus_version["hello"]["commit"] == head2
    (train_id,) = get_queue("gpu", redis_conn).job_ids
    assert Job.fetch(train_id, connection=redis_conn).func_name == "bot.jobs.train_step"

    # No base model in this home: training fails, the run says why, serving is untouched,
    # and the model is free again.
    work(redis_conn, ("gpu",))
    run = load_run(settings.home, run.id)
    assert run.status == RunStatus.FAILED and run.error.startswith("training failed")
    assert [h[0] for h in run.history] == ["queued", "ingesting", "training", "failed"]
    assert not (settings.home / "triton").exists()
    assert scheduler.lock_holder(redis_conn, "codegen") is None

    follow = scheduler.tick(settings, redis_conn, now=t0 + 6000)
    follow_run = load_run(settings.home, follow["run"])
    assert [p["delivery_id"] for p in follow_run.trigger.pushes] == ["d-2"]
    assert follow_run.trigger.commit == head2


def test_small_changes_wait_below_the_threshold(make_repo, bot_settings, redis_conn):
    repo = make_repo(files=12, seed=4)
    settings = bot_settings(github_url=repo.url, min_changed_files=3, min_changed_bytes=10**9,
                            debounce_seconds=0)
    enqueue(redis_conn, ingest_spec("hello", "main", None, "reconcile"))
    work(redis_conn, ("ingest",))
    scheduler._take_pending(settings, redis_conn)  # as if a run just covered the first build
    repo.write("one.py", "print('one')\n" * 30)
    head = repo.commit("one")
    client = create_app(settings, redis_conn).test_client()
    deliver(client, github_push(ZERO, head), "d-small")
    work(redis_conn, ("ingest",))
    did = scheduler.tick(settings, redis_conn)
    assert did["run"] is None and did["reason"].startswith("below threshold: 1 files")
    scheduler.pause(redis_conn)
    settings.policy.min_changed_files = 1
    assert scheduler.tick(settings, redis_conn)["reason"] == "paused"
    scheduler.resume(redis_conn)
    assert scheduler.tick(settings, redis_conn)["run"] is not None


def test_force_push_and_missed_webhook_end_equal_to_a_full_build(make_repo, bot_settings, redis_conn, tmp_path):
    repo = make_repo(files=16, seed=5)
    settings = bot_settings(github_url=repo.url, reconcile_seconds=900)
    client = create_app(settings, redis_conn).test_client()
    deliver(client, github_push(ZERO, repo.head()), "f-1")
    for i in range(2):
        repo.write(f"src/gone_{i}.py", f"VALUE_{i} = {i}\n" * 40)
        repo.commit(f"soon rewritten {i}")
    deliver(client, github_push(ZERO, repo.head()), "f-2")
    work(redis_conn, ("ingest",))
    old = repo.head()

    # Force push: history rewritten, two files vanish, another appears.
    repo.git("reset", "-q", "--hard", "HEAD~2")
    repo.write("src/rewritten.py", "def rewritten():\n    return 42\n" * 10)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "rewrite")
    repo.git("push", "-q", "--force", "origin", "HEAD:main")
    deliver(client, github_push(old, repo.head(), forced=True), "f-3")
    work(redis_conn, ("ingest",))
    assert corpus.stats(settings.home, "hello")["commit"] == repo.head()
    assert records(settings.home, "hello") == full_build(tmp_path / "a", settings.repos[0])

    # Missed webhook: the push happens, no delivery arrives; reconciliation catches it.
    repo.remove("src/rewritten.py")
    repo.write("src/late.py", "LATE = True\n" * 30)
    missed = repo.commit("nobody told the bot")
    did = scheduler.tick(settings, redis_conn)
    assert len(did["reconcile"]) == 1
    assert scheduler.tick(settings, redis_conn)["reconcile"] == []  # not again within the interval
    work(redis_conn, ("ingest",))
    assert corpus.stats(settings.home, "hello")["commit"] == missed
    assert records(settings.home, "hello") == full_build(tmp_path / "b", settings.repos[0])
    kinds = [p.get("kind") for p in scheduler.pending(settings, redis_conn)["pushes"]]
    assert kinds[-1] == "reconcile"


def test_a_run_whose_job_vanished_is_failed_as_abandoned(make_repo, bot_settings, redis_conn):
    repo = make_repo(files=8, seed=6)
    settings = bot_settings(github_url=repo.url)
    run_id = scheduler.request_training(settings, redis_conn, "hello", reason="test", requested_by="alice")
    run = load_run(settings.home, run_id)
    assert run.trigger.kind == "chatops" and run.trigger.requested_by == "alice"
    assert scheduler.request_training(settings, redis_conn, "hello") is None  # the model is busy
    # The job is still queued: a lapsed lease is taken back, the run lives on.
    redis_conn.delete(scheduler.lock_key("codegen"))
    assert scheduler.tick(settings, redis_conn)["abandoned"] == []
    assert scheduler.lock_holder(redis_conn, "codegen") == run_id
    # Its worker died and the job is gone: the run fails as abandoned and frees the model.
    redis_conn.delete(scheduler.lock_key("codegen"))
    Job.fetch(run.job_id, connection=redis_conn).delete()
    assert scheduler.tick(settings, redis_conn)["abandoned"] == [run_id]
    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.FAILED and "abandoned" in run.error


def test_a_tracked_release_branch_feeds_its_own_corpus(make_repo, bot_settings, redis_conn):
    from bot.recipe import corpora as _corpora

    repo = make_repo(files=6, seed=10)
    settings = bot_settings(github_url=repo.url)
    settings.repos[0].branches = ["main", "release/*"]
    repo.git("checkout", "-q", "-b", "release/1.0")
    repo.write("src/release_only.py", "RELEASE = '1.0'\n" * 20)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "release")
    repo.git("push", "-q", "origin", "release/1.0")
    client = create_app(settings, redis_conn).test_client()
    deliver(client, github_push(ZERO, repo.head(), branch="release/1.0"), "rel-1")
    work(redis_conn, ("ingest",))
    assert corpus.stats(settings.home, "hello@release%2F1.0")["commit"] == repo.head()
    assert [b for _, b in _corpora(settings)] == ["main", "release/1.0"]
