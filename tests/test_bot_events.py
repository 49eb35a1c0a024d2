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
    partial = {k: v for k, v in comment.as_dict().items() if k not in ("author", "on_review")}
    with pytest.raises(events.MalformedDelivery, match="needs author, on_review"):
        events.CommentEvent.from_dict(partial)
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


# --- "is this comment for the bot?" ---------------------------------------------------------
# The webhook and the chat-ops job used to answer this with two different functions. The cases
# marked "disagreed" are where they did: the webhook queued a job the job then dropped, or
# dropped a comment the job would have run. The agreed rule is the job's (the parser's): the
# first WORD of the literal first line is the prefix or an exact @mention, and any bot account
# is ignored. Both edges now call events.for_bot.

BOT = "repotune-bot"


def _comment(body: str = "/repotune status", **change) -> events.CommentEvent:
    fields = {"forge": "github", "repo": "acme/web", "project_id": None, "number": 7,
              "comment_id": 1, "author": "alice", "author_id": 5, "body": body,
              "action": "created", "on_review": True, "head_sha": None, "delivery_id": "d"}
    return events.CommentEvent(**{**fields, **change})


def _for_bot(event: events.CommentEvent, configured: bool = True) -> events.NotForBot | None:
    return events.for_bot(event, prefix="/repotune", bot_username=BOT, repo_configured=configured)


@pytest.mark.parametrize("body, expected", [
    ("/repotune status", None),
    ("  /repotune status  \nmore text", None),
    ("@repotune-bot status", None),
    ("@Repotune-Bot: status", None),
    ("@repotune-bot[bot], status", None),
    ("/repotune", None),  # bare prefix: the help table
    # disagreed: the webhook matched a prefix of the word, so these were queued and dropped.
    ("/repotunes status", events.NotForBot.NOT_A_COMMAND),
    ("/repotune-x status", events.NotForBot.NOT_A_COMMAND),
    ("@repotune-botty status", events.NotForBot.NOT_A_COMMAND),
    ("@repotune-bot2 status", events.NotForBot.NOT_A_COMMAND),
    # disagreed: the webhook did not drop a byte-order mark, so this command was never queued.
    ("\ufeff/repotune status", None),
    # disagreed: the webhook skipped blank leading lines; only the first line is ever read.
    ("\n\n/repotune status", events.NotForBot.NOT_A_COMMAND),
    # agreed all along
    ("LGTM, /repotune status later", events.NotForBot.NOT_A_COMMAND),
    ("nice work\n/repotune status", events.NotForBot.NOT_A_COMMAND),
    ("/REPOTUNE status", events.NotForBot.NOT_A_COMMAND),
    ("", events.NotForBot.NOT_A_COMMAND),
])
def test_for_bot_addressing(body: str, expected):
    assert _for_bot(_comment(body)) is expected


@pytest.mark.parametrize("author, expected", [
    ("alice", None),
    ("repotune-bot", events.NotForBot.BY_BOT),
    ("REPOTUNE-BOT", events.NotForBot.BY_BOT),
    # disagreed: the webhook only ignored the exact bot name and queued these.
    ("repotune-bot[bot]", events.NotForBot.BY_BOT),
    ("dependabot[bot]", events.NotForBot.BY_BOT),
    ("botanist", None),  # "bot" inside a human's name is not a bot
])
def test_for_bot_ignores_every_bot_account(author: str, expected):
    assert _for_bot(_comment(author=author)) is expected


def test_for_bot_order_and_reasons():
    # Several reasons at once: the first in (new, on a review, bot, configured, addressed) wins
    # (the webhook used to check "on a review" before "new"; the job the other way round).
    both = _comment("hi", action="edited", on_review=False, author="x[bot]")
    assert _for_bot(both, configured=False) is events.NotForBot.NOT_NEW
    assert _for_bot(_comment(on_review=False), configured=False) is events.NotForBot.NOT_ON_REVIEW
    assert _for_bot(_comment(), configured=False) is events.NotForBot.NOT_CONFIGURED
    assert _for_bot(_comment(action="create", forge="gitlab")) is None
    for action in ("edited", "deleted", "update"):
        assert _for_bot(_comment(action=action)) is events.NotForBot.NOT_NEW

    def reason(event: events.CommentEvent) -> str:
        why = _for_bot(event, configured=event.repo == "acme/web")
        assert why is not None
        return events.not_for_bot_reason(why, event, BOT)

    assert reason(_comment(author="repotune-bot[bot]")) == "comment by the bot itself"
    assert reason(_comment(author="dependabot[bot]")) == "comment by a bot (dependabot[bot])"
    assert reason(_comment("hello")) == "comment is not a command"
    assert reason(_comment(repo="acme/other")) == "repository acme/other is not configured"
    assert "edits and deletions are ignored" in reason(_comment(action="edited"))


@pytest.mark.parametrize("event, payload, field", [
    ("push", {"ref": 5, "after": "b" * 40}, "`ref` is a number, expected a string"),
    ("push", {"ref": "refs/heads/main", "after": "b" * 40, "repository": []},
     "`repository` is an array, expected an object"),
    ("push", {"ref": "refs/heads/main", "after": "b" * 40, "repository": {"full_name": "a/b"},
              "pusher": "mallory"}, "`pusher` is a string, expected an object"),
    ("push", {"ref": "refs/heads/main", "after": "b" * 40, "repository": {"full_name": "a/b"},
              "commits": {"n": 1}}, "`commits` is an object, expected an array"),
    ("issue_comment", {"issue": {"number": 1}, "comment": "hi"},
     "`comment` is a string, expected an object"),
    ("issue_comment", {"issue": {"number": "seven"}, "comment": {"id": 1},
                       "repository": {"full_name": "a/b"}}, "`number` is a string, expected an integer"),
    ("issue_comment", {"issue": {"number": True}, "comment": {"id": 1},
                       "repository": {"full_name": "a/b"}}, "`number` is a boolean"),
    ("issue_comment", {"issue": {"number": 1}, "comment": {"id": 2, "user": ["x"]},
                       "repository": {"full_name": "a/b"}}, "`user` is an array, expected an object"),
])
def test_wrong_types_are_malformed_and_name_the_field(event, payload, field):
    with pytest.raises(events.MalformedDelivery, match=field.replace("(", r"\(").replace("[", r"\[")):
        events.parse_github(event, "d", payload)


def test_deep_nesting_is_malformed_not_a_crash():
    with pytest.raises(events.MalformedDelivery, match="nested too deeply"):
        events.decode_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(events.MalformedDelivery, match="nested too deeply"):
        events.decode_json(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
