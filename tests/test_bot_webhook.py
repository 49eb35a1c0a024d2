"""The webhook app against a real Redis: verification, normalisation, dedupe, status codes."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest
import redis

from bot import config
from bot.errors import ConfigError
from bot.queue import delivery_key, get_queue
from bot.webhook import create_app
from tests.fixtures.bot import (
    GITLAB_TOKEN,
    github_headers,
    github_pr_comment,
    github_push,
    gitlab_headers,
    gitlab_push,
    load_payload,
)
from tests.fixtures.redis import RedisServer

A, B = "a" * 40, "b" * 40


@pytest.fixture
def app(bot_settings, redis_conn):
    settings = bot_settings(github_url="file:///nonexistent/hello.git", gitlab_url="file:///nonexistent/web.git")
    return create_app(settings, redis_conn)


def post_github(client, event: str, payload: dict, delivery: str, **kw):
    body = json.dumps(payload).encode()
    return client.post("/webhooks/github", data=body, headers=github_headers(event, body, delivery, **kw))


def test_signed_push_is_accepted_and_queues_one_ingest(app, redis_conn):
    client = app.test_client()
    resp = post_github(client, "push", github_push(A, B), "d-1")
    assert resp.status_code == 202, resp.json
    assert resp.json["delivery"] == "d-1"
    (queued,) = resp.json["queued"]
    assert queued["queue"] == "ingest" and queued["repo"] == "hello" and queued["after"] == B
    ingest = get_queue("ingest", redis_conn)
    assert ingest.job_ids == [queued["job"]]
    job = ingest.fetch_job(queued["job"])
    assert job.func_name == "bot.jobs.ingest_job" and job.args[0] == "hello"
    assert job.retries_left == 3


def test_redelivery_is_a_duplicate_and_queues_nothing(app, redis_conn):
    client = app.test_client()
    assert post_github(client, "push", github_push(A, B), "d-2").status_code == 202
    again = post_github(client, "push", github_push(A, B), "d-2")
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert get_queue("ingest", redis_conn).count == 1


def test_form_encoded_delivery(app, redis_conn):
    body = urlencode({"payload": json.dumps(github_push(A, B))}).encode()
    headers = github_headers("push", body, "d-form")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    resp = app.test_client().post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == 202, resp.json
    assert get_queue("ingest", redis_conn).count == 1


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "sha1=abc"])
def test_bad_or_missing_signature_is_401(app, redis_conn, signature):
    body = json.dumps(github_push(A, B)).encode()
    headers = github_headers("push", body, "d-bad", secret=None)
    if signature:
        headers["X-Hub-Signature-256"] = signature
    resp = app.test_client().post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == 401
    assert get_queue("ingest", redis_conn).count == 0
    assert not redis_conn.exists(delivery_key("github", "d-bad"))


def test_signature_over_a_different_body_is_401(app):
    body = json.dumps(github_push(A, B)).encode()
    headers = github_headers("push", body, "d-x")
    resp = app.test_client().post("/webhooks/github", data=body + b" ", headers=headers)
    assert resp.status_code == 401


def test_malformed_body_and_missing_headers_are_400(app):
    client = app.test_client()
    body = b"{not json"
    assert client.post("/webhooks/github", data=body,
                       headers=github_headers("push", body, "d-m")).status_code == 400
    body = json.dumps({"ref": "refs/heads/main"}).encode()  # no after/repository
    assert client.post("/webhooks/github", data=body,
                       headers=github_headers("push", body, "d-m2")).status_code == 400
    body = json.dumps(github_push(A, B)).encode()
    headers = github_headers("push", body, "d-m3")
    del headers["X-GitHub-Delivery"]
    assert client.post("/webhooks/github", data=body, headers=headers).status_code == 400


def test_body_over_the_limit_is_413(bot_settings, redis_conn):
    settings = bot_settings(github_url="file:///x.git")
    settings.webhook.max_body_bytes = 1000
    body = json.dumps({"pad": "x" * 2000}).encode()
    resp = create_app(settings, redis_conn).test_client().post(
        "/webhooks/github", data=body, headers=github_headers("push", body, "d-big"))
    assert resp.status_code == 413


def test_real_octokit_pings_tags_and_others_are_answered_without_jobs(app, redis_conn):
    client = app.test_client()
    ping = post_github(client, "ping", load_payload("github", "ping"), "p-1")
    assert ping.status_code == 200 and ping.json["status"] == "pong"
    for name, why in [("push-tag", "tag push"), ("push-tag-deleted", "tag push")]:
        resp = post_github(client, "push", load_payload("github", name), f"t-{name}")
        assert resp.status_code == 200 and why in resp.json["reason"]
    other = post_github(client, "issues", {"action": "opened"}, "o-1")
    assert other.status_code == 200 and other.json["status"] == "ignored"
    plain = post_github(client, "issue_comment", load_payload("github", "issue_comment-created"), "c-1")
    assert "not on a pull" in plain.json["reason"]
    assert sum(get_queue(n, redis_conn).count for n in ("ingest", "control")) == 0


def test_untracked_branch_deleted_branch_and_unconfigured_repo_are_ignored(app, redis_conn):
    client = app.test_client()
    resp = post_github(client, "push", github_push(A, B, branch="feature/x"), "u-1")
    assert resp.status_code == 200 and "not tracked" in resp.json["reason"]
    deleted = github_push(A, "0" * 40)
    deleted["deleted"] = True
    resp = post_github(client, "push", deleted, "u-2")
    assert "deleted" in resp.json["reason"]
    other = github_push(A, B)
    other["repository"]["full_name"] = "someone/else"
    resp = post_github(client, "push", other, "u-3")
    assert "not configured" in resp.json["reason"]
    assert get_queue("ingest", redis_conn).count == 0


def test_pr_comment_command_goes_to_control_queue(app, redis_conn):
    client = app.test_client()
    resp = post_github(client, "issue_comment", github_pr_comment("/repotune status"), "c-2")
    assert resp.status_code == 202, resp.json
    job = get_queue("control", redis_conn).fetch_job(resp.json["queued"][0]["job"])
    assert job.func_name == "bot.chatops.handle_comment_job"
    assert job.args[0]["body"] == "/repotune status" and job.args[0]["on_review"] is True
    chatter = post_github(client, "issue_comment", github_pr_comment("looks good"), "c-3")
    assert chatter.json["reason"] == "comment is not a command"
    own = post_github(client, "issue_comment", github_pr_comment("/repotune help", author="repotune"), "c-4")
    assert own.json["reason"] == "comment by the bot itself"


def test_gitlab_push_note_and_merge_request(app, redis_conn):
    client = app.test_client()
    body = json.dumps(gitlab_push(A, B)).encode()
    resp = client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "g-1"))
    assert resp.status_code == 202, resp.json
    assert resp.json["queued"][0]["repo"] == "acme/web"
    again = client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "g-1"))
    assert again.json["status"] == "duplicate"
    bad = client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "g-2", token="nope"))
    assert bad.status_code == 401
    note = json.dumps(load_payload("gitlab", "note-merge-request")).encode()
    resp = client.post("/webhooks/gitlab", data=note, headers=gitlab_headers("Note Hook", "g-3"))
    assert resp.status_code == 202, resp.json
    job = get_queue("control", redis_conn).fetch_job(resp.json["queued"][0]["job"])
    assert job.args[0]["project_id"] == 15 and job.args[0]["number"] == 1
    mr = json.dumps(load_payload("gitlab", "merge-request")).encode()
    resp = client.post("/webhooks/gitlab", data=mr, headers=gitlab_headers("Merge Request Hook", "g-4"))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"
    assert get_queue("ingest", redis_conn).count == 1


def test_redis_down_is_503_and_leaves_no_state(bot_settings, tmp_path):
    server = RedisServer(tmp_path)
    settings = bot_settings(github_url="file:///x.git")
    app = create_app(settings, redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5))
    client = app.test_client()
    server.stop()
    resp = post_github(client, "push", github_push(A, B), "r-1")
    assert resp.status_code == 503 and resp.json["status"] == "unavailable"
    assert client.get("/healthz").status_code == 503
    # Redis returns: the same delivery was not remembered, so it is processed normally now.
    server2 = RedisServer(tmp_path)
    try:
        conn = server2.client()
        client2 = create_app(settings, conn).test_client()
        assert post_github(client2, "push", github_push(A, B), "r-1").status_code == 202
        assert get_queue("ingest", conn).count == 1
    finally:
        server2.stop()


def test_refuses_to_start_without_a_secret(tmp_path, redis_conn):
    settings = config.load(None, env={"REPOTUNE_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="REPOTUNE_GITHUB_WEBHOOK_SECRET"):
        create_app(settings, redis_conn)
    settings.insecure_no_webhook_secret = True
    client = create_app(settings, redis_conn).test_client()
    body = json.dumps(load_payload("github", "ping")).encode()
    resp = client.post("/webhooks/github", data=body, headers=github_headers("ping", body, "i-1", secret=None))
    assert resp.status_code == 200


def test_health_metrics_and_status(app):
    client = app.test_client()
    assert client.get("/healthz").json == {"status": "ok", "redis": True}
    post_github(client, "ping", load_payload("github", "ping"), "m-1")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'repotune_webhook_deliveries_total{forge="github",outcome="ping"} 1.0' in metrics
    status = client.get("/api/status").json
    assert [r["name"] for r in status["repositories"]] == ["hello", "acme/web"]
    assert set(status["queues"]) == {"ingest", "gpu", "deploy", "control"}
    assert status["paused"] is False and status["runs"] == []


def test_gitlab_token_is_required_when_configured(app):
    body = json.dumps(gitlab_push(A, B)).encode()
    headers = gitlab_headers("Push Hook", "g-9", token=None)
    assert app.test_client().post("/webhooks/gitlab", data=body, headers=headers).status_code == 401
    assert GITLAB_TOKEN  # the fixture's token is what the app was configured with


def test_a_push_replayed_under_a_new_delivery_id_queues_nothing(app, redis_conn):
    # An attacker who captured one signed delivery can resend it with any X-GitHub-Delivery
    # (the signature covers the body only): the body digest recognises it.
    client = app.test_client()
    assert post_github(client, "push", github_push(A, B), "orig").status_code == 202
    replay = post_github(client, "push", github_push(A, B), "forged-new-id")
    assert replay.status_code == 200 and replay.json["status"] == "duplicate", replay.json
    assert get_queue("ingest", redis_conn).count == 1
    # A different push (another commit) is still accepted.
    assert post_github(client, "push", github_push(B, "c" * 40), "next").status_code == 202
    assert get_queue("ingest", redis_conn).count == 2
    # GitLab: same body, new event UUID.
    body = json.dumps(gitlab_push(A, B)).encode()
    assert client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "u1")).status_code == 202
    again = client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "u2"))
    assert again.json["status"] == "duplicate"
    assert get_queue("ingest", redis_conn).count == 3


def test_a_comment_replayed_under_a_new_delivery_id_or_body_queues_nothing(app, redis_conn):
    client = app.test_client()
    first = post_github(client, "issue_comment", github_pr_comment("/repotune retrain"), "c-a")
    assert first.status_code == 202, first.json
    # Same comment, new delivery id, and bytes changed (the JSON re-serialised with an extra
    # field), so only the forge's comment id can tell: still one job.
    payload = github_pr_comment("/repotune retrain")
    payload["replayed"] = True
    replay = post_github(client, "issue_comment", payload, "c-b")
    assert replay.json["status"] == "duplicate", replay.json
    assert get_queue("control", redis_conn).count == 1
    other = github_pr_comment("/repotune retrain")
    other["comment"]["id"] += 1  # a new comment with the same words is a new command
    assert post_github(client, "issue_comment", other, "c-c").status_code == 202
    assert get_queue("control", redis_conn).count == 2


def _deep(levels: int) -> bytes:
    return b'{"ref":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("event, body, reason", [
    ("push", json.dumps({"ref": ["refs/heads/main"], "after": B}).encode(), "`ref` is an array"),
    ("push", json.dumps(dict(github_push(A, B), repository="hello")).encode(), "`repository` is a string"),
    ("push", json.dumps(dict(github_push(A, B), pusher="x")).encode(), "`pusher` is a string"),
    ("push", json.dumps(dict(github_push(A, B), commits=3)).encode(), "`commits` is a number"),
    ("push", _deep(50_000), "nested too deeply"),
    ("push", b"[" * 100_000, "not valid JSON|nested too deeply"),
    ("issue_comment", json.dumps(dict(github_pr_comment("/repotune status"), comment=[1])).encode(),
     "`comment` is an array"),
    ("issue_comment", json.dumps(dict(github_pr_comment("/repotune status"), issue={"number": {}})).encode(),
     "`number` is an object"),
    ("issue_comment", json.dumps(dict(github_pr_comment("/repotune status"), repository=None)).encode(),
     "lacks `repository.full_name`"),
])
def test_signed_but_malformed_github_payloads_are_400_with_the_reason(app, redis_conn, event, body, reason):
    resp = app.test_client().post("/webhooks/github", data=body, headers=github_headers(event, body, "bad"))
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.json["status"] == "malformed"
    assert re.search(reason, resp.json["error"]), resp.json
    assert not redis_conn.exists(delivery_key("github", "bad"))


@pytest.mark.parametrize("event, change, reason", [
    ("Push Hook", {"project": "acme/web"}, "`project` is a string"),
    ("Push Hook", {"total_commits_count": "many"}, "`total_commits_count` is a string"),
    ("Note Hook", {"object_attributes": [1]}, "`object_attributes` is an array"),
    ("Note Hook", {"merge_request": "!1"}, "`merge_request` is a string"),
    ("Note Hook", {"user": {"username": 7}}, "`user.username` is a number"),
    ("Merge Request Hook", {"object_attributes": 1}, "`object_attributes` is a number"),
])
def test_signed_but_malformed_gitlab_payloads_are_400_with_the_reason(app, event, change, reason):
    base = gitlab_push(A, B) if event == "Push Hook" else load_payload(
        "gitlab", "note-merge-request" if event == "Note Hook" else "merge-request")
    body = json.dumps(dict(base, **change)).encode()
    resp = app.test_client().post("/webhooks/gitlab", data=body, headers=gitlab_headers(event, "gbad"))
    assert resp.status_code == 400 and resp.json["status"] == "malformed", resp.get_data(as_text=True)
    assert reason in resp.json["error"]


def test_deleting_a_tracked_branch_queues_its_retirement_on_both_forges(bot_settings, redis_conn):
    settings = bot_settings(github_url="file:///nonexistent/hello.git", gitlab_url="file:///nonexistent/web.git")
    for repo in settings.repos:
        repo.branches = ["main", "feature/*"]
    client = create_app(settings, redis_conn).test_client()
    deleted = dict(github_push(A, "0" * 40, branch="feature/x"), deleted=True)
    resp = post_github(client, "push", deleted, "del-gh")
    assert resp.status_code == 202, resp.json
    body = json.dumps(gitlab_push(A, "0" * 40, branch="feature/x")).encode()
    resp2 = client.post("/webhooks/gitlab", data=body, headers=gitlab_headers("Push Hook", "del-gl"))
    assert resp2.status_code == 202, resp2.json
    ingest = get_queue("ingest", redis_conn)
    jobs = [ingest.fetch_job(r.json["queued"][0]["job"]) for r in (resp, resp2)]
    assert [(j.func_name, j.args[:2]) for j in jobs] == [("bot.jobs.retire_job", ("hello", "feature/x")),
                                                         ("bot.jobs.retire_job", ("acme/web", "feature/x"))]
    untracked = dict(github_push(A, "0" * 40, branch="spike/y"), deleted=True)
    resp = post_github(client, "push", untracked, "del-untracked")
    assert resp.status_code == 200 and "not tracked" in resp.json["reason"]
    assert ingest.count == 2
