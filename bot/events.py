"""Webhook deliveries → typed events. Pure: no Flask, no Redis, no git.

:func:`parse_github` and :func:`parse_gitlab` take the event name, delivery id and decoded payload
and return one of :class:`PushEvent`, :class:`BranchDeleted`, :class:`CommentEvent`, :class:`Ping`
or :class:`Ignored` (with the reason a person would want to read). :func:`decode_github_body` handles both delivery
content types; the two ``verify_*`` functions compare secrets in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing as t
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs

from bot._payload import MalformedDelivery, count, integer, obj, text
from bot.signatures import github_signature as github_signature
from bot.signatures import verify_github_signature as verify_github_signature
from bot.signatures import verify_gitlab_token as verify_gitlab_token

ZERO_SHA = "0" * 40




@dataclass(frozen=True)
class PushEvent:
    """A push to a branch, the same for both forges."""

    forge: str
    """``github`` or ``gitlab``."""
    repo: str
    """Forge path ``owner/name`` (GitHub ``full_name``, GitLab ``path_with_namespace``)."""
    clone_url: str
    """HTTPS clone URL named by the payload (the configured URL wins for fetching)."""
    ref: str
    """Full ref, ``refs/heads/main``."""
    branch: str
    """Branch name, ``main``."""
    before: str
    """Commit before the push (all zeros when the branch was created)."""
    after: str
    """Commit after the push."""
    pusher: str
    """Who pushed (login / username)."""
    commit_count: int
    """Commits in the push as reported by the forge."""
    delivery_id: str
    """Delivery id (GitHub ``X-GitHub-Delivery``; GitLab idempotency key or event UUID)."""
    default_branch: str | None = None
    """The repository's default branch according to the payload."""
    project_id: int | None = None
    """GitLab project id."""
    forced: bool = False
    """GitHub's ``forced`` flag (GitLab does not say)."""

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CommentEvent:
    """A comment on an issue, pull request or merge request (chat-ops reads these)."""

    forge: str
    repo: str
    project_id: int | None
    number: int
    """PR number / MR iid."""
    comment_id: int
    author: str
    author_id: int | None
    body: str
    action: str
    """``created``/``edited``/``deleted`` (GitHub); ``create``/``update`` (GitLab notes)."""
    on_review: bool
    """The comment is on a pull/merge request (not a plain issue, commit or snippet)."""
    head_sha: str | None
    delivery_id: str

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> CommentEvent:
        """The event back from :meth:`as_dict` (how the chat-ops job receives it); every field
        must be there, so a hand-made dict that forgot one fails here, not as a None later."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise MalformedDelivery(f"a comment event needs {', '.join(missing)} (build it with "
                                    "CommentEvent.as_dict())")
        return cls(**{n: data[n] for n in names})


@dataclass(frozen=True)
class Ping:
    """GitHub's hook-created ping."""

    forge: str
    delivery_id: str
    zen: str = ""


@dataclass(frozen=True)
class Ignored:
    """A delivery acknowledged with 200 and nothing queued."""

    reason: str


@dataclass(frozen=True)
class BranchDeleted:
    """A push that deleted a branch (GitHub ``deleted: true``; GitLab ``after`` all zeros).

    Routed to the retirement of the branch's corpus (:func:`bot.jobs.retire_job`) when the
    branch is tracked; otherwise answered like :class:`Ignored`, with :attr:`reason`."""

    forge: str
    repo: str
    branch: str
    delivery_id: str
    project_id: int | None = None
    pusher: str = ""

    @property
    def reason(self) -> str:
        return f"branch {self.branch} was deleted"

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


Event = PushEvent | BranchDeleted | CommentEvent | Ping | Ignored


# --- is this comment for the bot? ---------------------------------------------------------
# One definition, used by the webhook (to decide whether to queue a chat-ops job) and by the job
# (which checks again: a job may be queued by other means). They used to disagree; see
# docs/chatops.md "Grammar" for the rules and tests/test_bot_events.py for the pinned cases.


class NotForBot(str, Enum):
    """Why a comment is not a command for the bot; the value is the category, and
    :func:`not_for_bot_reason` the sentence a person reads."""

    NOT_NEW = "edit or deletion"
    NOT_ON_REVIEW = "not on a review"
    BY_BOT = "comment by a bot"
    NOT_CONFIGURED = "repository not configured"
    NOT_A_COMMAND = "not a command"


_NEW_COMMENT = ("created", "create")
"""GitHub ``issue_comment`` action / GitLab note action of a new comment."""


def first_line(body: str) -> str:
    """The only line a command may occupy: the comment's literal first line (a leading BOM
    dropped, surrounding spaces stripped). A blank first line means no command."""
    text = (body or "").lstrip("\ufeff")
    return text.splitlines()[0].strip() if text.strip() else ""


def addressed(body: str, prefix: str = "/repotune", bot_username: str = "repotune") -> bool:
    """Whether the comment's first WORD is the prefix or an @mention of the bot (``@bot``,
    ``@bot:``, ``@bot,``, ``@bot[bot]``, any case). ``/repotunes`` or ``@bot-two`` are not."""
    line = first_line(body)
    if not line:
        return False
    head = line.split(None, 1)[0]
    return head == prefix or _is_mention(head, bot_username)


def _is_mention(word: str, bot_username: str) -> bool:
    if not word.startswith("@") or not bot_username:
        return False
    name = word[1:].rstrip(":,").lower()
    bot = bot_username.lower()
    return name in (bot, f"{bot}[bot]")


def is_bot_author(author: str, bot_username: str) -> bool:
    """The bot itself (``bot`` or ``bot[bot]``, any case) or any GitHub App (``…[bot]``)."""
    name, bot = (author or "").lower(), (bot_username or "").lower()
    return name in (bot, f"{bot}[bot]") or name.endswith("[bot]")


def for_bot(event: CommentEvent, *, prefix: str, bot_username: str,
            repo_configured: bool) -> NotForBot | None:
    """None when ``event`` is a chat-ops command for the bot; otherwise why it is not.

    Checked in this order (the first that applies is the answer): a new comment, on a
    pull/merge request, not written by a bot, in a configured repository, addressed to the bot.
    """
    if event.action not in _NEW_COMMENT:
        return NotForBot.NOT_NEW
    if not event.on_review:
        return NotForBot.NOT_ON_REVIEW
    if is_bot_author(event.author, bot_username):
        return NotForBot.BY_BOT
    if not repo_configured:
        return NotForBot.NOT_CONFIGURED
    if not addressed(event.body, prefix, bot_username):
        return NotForBot.NOT_A_COMMAND
    return None


def not_for_bot_reason(why: NotForBot, event: CommentEvent, bot_username: str) -> str:
    """The sentence for an ignored comment (the webhook's ``reason``)."""
    if why is NotForBot.NOT_NEW:
        return f"comment {event.action}: only new comments are commands (edits and deletions are ignored)"
    if why is NotForBot.NOT_ON_REVIEW:
        return "comment is not on a pull/merge request"
    if why is NotForBot.BY_BOT:
        if (event.author or "").lower().removesuffix("[bot]") == (bot_username or "").lower():
            return "comment by the bot itself"
        return f"comment by a bot ({event.author})"
    if why is NotForBot.NOT_CONFIGURED:
        return f"repository {event.repo} is not configured"
    return "comment is not a command"


# --- decoding ------------------------------------------------------------------------------


def decode_github_body(body: bytes, content_type: str | None) -> dict[str, t.Any]:
    """The payload of a GitHub delivery sent as ``application/json`` or form-encoded ``payload=``."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedDelivery(f"form body cannot be parsed: {exc}") from exc
        if "payload" not in form:
            raise MalformedDelivery("form-encoded delivery without a `payload` field")
        raw: str | bytes = form["payload"][0]
    elif kind in ("application/json", ""):
        raw = body
    else:
        raise MalformedDelivery(f"unsupported content type {content_type!r}; "
                                f"use application/json or application/x-www-form-urlencoded")
    return decode_json(raw)


def decode_json(raw: str | bytes) -> dict[str, t.Any]:
    """A JSON object, or MalformedDelivery."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedDelivery(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json's decoder recurses once per nesting level
        raise MalformedDelivery("body is JSON nested too deeply to read") from exc
    if not isinstance(payload, dict):
        raise MalformedDelivery("body is JSON but not an object")
    return payload


def _branch_of(ref: str) -> str | None:
    return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None


# --- GitHub --------------------------------------------------------------------------------

GITHUB_EVENTS = ("ping", "push", "issue_comment")


def parse_github(event: str, delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    """Normalise one GitHub delivery (``X-GitHub-Event`` = ``event``)."""
    if event == "ping":
        return Ping("github", delivery_id, str(payload.get("zen") or ""))
    if event == "push":
        return _github_push(delivery_id, payload)
    if event == "issue_comment":
        issue = obj(payload, "issue")
        comment = obj(payload, "comment")
        return CommentEvent(
            forge="github", repo=text(payload, "repository", "full_name"), project_id=None,
            number=t.cast(int, integer(issue, "number")), comment_id=t.cast(int, integer(comment, "id")),
            author=text(comment, "user", "login", required=False),
            author_id=integer(comment, "user", "id", required=False),
            body=text(comment, "body", required=False), action=text(payload, "action", required=False),
            on_review="pull_request" in issue, head_sha=None, delivery_id=delivery_id,
        )
    return Ignored(f"GitHub event {event!r} is not used (handled: {', '.join(GITHUB_EVENTS)})")


def _github_push(delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    ref = text(payload, "ref")
    if ref.startswith("refs/tags/"):
        return Ignored(f"tag push ({ref}) is not ingested")
    branch = _branch_of(ref)
    if branch is None:
        return Ignored(f"push to {ref} is not a branch")
    after = text(payload, "after")
    repo = obj(payload, "repository")
    pusher = (text(payload, "pusher", "name", required=False)
              or text(payload, "sender", "login", required=False))
    if payload.get("deleted") or after == ZERO_SHA:
        return BranchDeleted(forge="github", repo=text(repo, "full_name"), branch=branch,
                             delivery_id=delivery_id, pusher=pusher)
    return PushEvent(
        forge="github", repo=text(repo, "full_name"),
        clone_url=text(repo, "clone_url", required=False), ref=ref, branch=branch,
        before=text(payload, "before", required=False) or ZERO_SHA, after=after,
        pusher=pusher, commit_count=count(payload, "commits"), delivery_id=delivery_id,
        default_branch=text(repo, "default_branch", required=False) or None,
        forced=bool(payload.get("forced")),
    )


# --- GitLab --------------------------------------------------------------------------------

GITLAB_EVENTS = ("Push Hook", "Note Hook", "Merge Request Hook")


def parse_gitlab(event: str, delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    """Normalise one GitLab delivery (``X-Gitlab-Event`` = ``event``)."""
    if event == "Push Hook":
        return _gitlab_push(delivery_id, payload)
    if event == "Tag Push Hook":
        return Ignored("tag push is not ingested")
    if event == "Note Hook":
        return _gitlab_note(delivery_id, payload)
    if event == "Merge Request Hook":
        obj(payload, "object_attributes")
        return Ignored("merge request events need no action: a merge arrives as a Push Hook")
    return Ignored(f"GitLab event {event!r} is not used (handled: {', '.join(GITLAB_EVENTS)})")


def _gitlab_push(delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    ref = text(payload, "ref")
    branch = _branch_of(ref)
    if branch is None:
        return Ignored(f"push to {ref} is not a branch")
    after = text(payload, "after")
    project = obj(payload, "project")
    pusher = (text(payload, "user_username", required=False)
              or text(payload, "user_name", required=False))
    if after == ZERO_SHA:
        return BranchDeleted(
            forge="gitlab", repo=text(project, "path_with_namespace"), branch=branch,
            delivery_id=delivery_id, pusher=pusher,
            project_id=integer(payload, "project_id", required=False) or integer(project, "id", required=False))
    return PushEvent(
        forge="gitlab", repo=text(project, "path_with_namespace"),
        clone_url=text(project, "git_http_url", required=False), ref=ref, branch=branch,
        before=text(payload, "before", required=False) or ZERO_SHA, after=after, pusher=pusher,
        commit_count=integer(payload, "total_commits_count", required=False) or count(payload, "commits"),
        delivery_id=delivery_id, default_branch=text(project, "default_branch", required=False) or None,
        project_id=integer(payload, "project_id", required=False) or integer(project, "id", required=False),
    )


def _gitlab_note(delivery_id: str, payload: t.Mapping[str, t.Any]) -> CommentEvent:
    attrs = obj(payload, "object_attributes")
    project = obj(payload, "project")
    mr = obj(payload, "merge_request", required=False)
    on_mr = attrs.get("noteable_type") == "MergeRequest"
    return CommentEvent(
        forge="gitlab", repo=text(project, "path_with_namespace"),
        project_id=integer(payload, "project_id", required=False) or integer(project, "id", required=False),
        number=integer(mr, "iid", required=False) or 0, comment_id=t.cast(int, integer(attrs, "id")),
        author=text(payload, "user", "username", required=False),
        author_id=integer(payload, "user", "id", required=False),
        body=text(attrs, "note", required=False),
        action=text(attrs, "action", required=False) or "create",
        on_review=on_mr and bool(mr),
        head_sha=text(mr, "last_commit", "id", required=False) or None, delivery_id=delivery_id,
    )


def gitlab_delivery_id(headers: t.Mapping[str, str], body: bytes) -> str:
    """GitLab's stable id for a delivery: ``Idempotency-Key`` (same across retries), else the event
    UUID, else a hash of the body (so a byte-identical redelivery is still recognised)."""
    for name in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = headers.get(name)
        if value:
            return value
    return "sha256:" + hashlib.sha256(body).hexdigest()
