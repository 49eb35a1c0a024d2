"""Pure parts: real payloads → events, signatures, run state transitions and run records."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from bot import events
from bot.runs import (
    TRANSITIONS,
    InvalidTransition,
    RunStatus,
    list_runs,
    load_run,
    new_run,
    save_run,
    transition,
)
from tests.fixtures.bot import load_payload


def test_octokit_push_example():
    ev = events.parse_github("push", "d1", load_payload("github", "push"))
    assert isinstance(ev, events.PushEvent)
    assert (ev.repo, ev.branch, ev.ref) == ("Codertocat/Hello-World", "master", "refs/heads/master")
    assert ev.after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246" and ev.before == "0" * 40
    assert ev.pusher == "Codertocat" and ev.commit_count == 1
    assert ev.clone_url == "https://github.com/Codertocat/Hello-World.git" and ev.default_branch == "master"


def test_octokit_tag_pushes_and_comments():
    assert "tag push" in events.parse_github("push", "d", load_payload("github", "push-tag")).reason
    assert "tag push" in events.parse_github("push", "d", load_payload("github", "push-tag-deleted")).reason
    comment = events.parse_github("issue_comment", "d", load_payload("github", "issue_comment-created"))
    assert isinstance(comment, events.CommentEvent)
    assert comment.author == "Codertocat" and comment.on_review is False and comment.action == "created"
    assert comment.body.startswith("You are totally right")
    assert events.CommentEvent.from_dict(comment.as_dict()) == comment
    edited = events.parse_github("issue_comment", "d", load_payload("github", "issue_comment-edited"))
    assert edited.action == "edited"
    assert isinstance(events.parse_github("ping", "d", load_payload("github", "ping")), events.Ping)


def test_gitlab_examples():
    push = events.parse_gitlab("Push Hook", "g", load_payload("gitlab", "push"))
    assert (push.repo, push.branch, push.project_id, push.pusher) == ("acme/web", "main", 15, "jdoe")
    assert push.clone_url == "https://gitlab.example.com/acme/web.git" and push.commit_count == 1
    note = events.parse_gitlab("Note Hook", "g", load_payload("gitlab", "note-merge-request"))
    assert note.on_review and note.number == 1 and note.body == "/repotune status"
    assert note.head_sha == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7" and note.author_id == 4
    mr = events.parse_gitlab("Merge Request Hook", "g", load_payload("gitlab", "merge-request"))
    assert isinstance(mr, events.Ignored)
    deleted = dict(load_payload("gitlab", "push"), after="0" * 40)
    assert "deleted" in events.parse_gitlab("Push Hook", "g", deleted).reason
    assert isinstance(events.parse_gitlab("Pipeline Hook", "g", {}), events.Ignored)


def test_signatures_and_bodies():
    body = json.dumps(load_payload("github", "ping")).encode()
    sig = events.github_signature("s3cret", body)
    assert events.verify_github_signature("s3cret", body, sig)
    assert not events.verify_github_signature("other", body, sig)
    assert not events.verify_github_signature("s3cret", body, None)
    assert events.verify_gitlab_token("tok", "tok") and not events.verify_gitlab_token("tok", "tok2")
    form = urlencode({"payload": body.decode()}).encode()
    assert events.decode_github_body(form, "application/x-www-form-urlencoded") == json.loads(body)
    with pytest.raises(events.MalformedDelivery):
        events.decode_github_body(b"[1]", "application/json")
    with pytest.raises(events.MalformedDelivery):
        events.decode_github_body(b"a=b", "application/x-www-form-urlencoded")
    assert events.gitlab_delivery_id({"Idempotency-Key": "k"}, b"") == "k"
    assert events.gitlab_delivery_id({}, b"x").startswith("sha256:")


def test_run_transitions_and_records(tmp_path):
    run = new_run(repo="web", trigger={"kind": "push"}, model="codegen", now=1000.0)
    for status in ("ingesting", "training", "evaluating", "converting", "publishing", "serving"):
        transition(run, status, now=1001.0)
    assert run.status.terminal
    with pytest.raises(InvalidTransition, match="terminal"):
        transition(run, RunStatus.TRAINING)
    rejected = new_run(repo="web", trigger={}, now=2000.0)
    transition(rejected, "training")
    with pytest.raises(InvalidTransition, match="not serving"):
        transition(rejected, "serving")
    assert RunStatus.CONVERTING in TRANSITIONS[RunStatus.REJECTED]  # promote overrides the gate
    save_run(tmp_path, run)
    save_run(tmp_path, rejected)
    assert load_run(tmp_path, run.id) == run
    assert [r.id for r in list_runs(tmp_path)] == [rejected.id, run.id]
    assert set(TRANSITIONS) == set(RunStatus)
