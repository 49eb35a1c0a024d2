"""Webhook deliveries → typed events. Pure: no Flask, no Redis, no git.

:func:`parse_github` and :func:`parse_gitlab` take the event name, delivery id and decoded payload
and return one of :class:`PushEvent`, :class:`CommentEvent`, :class:`Ping` or :class:`Ignored`
(with the reason a person would want to read). :func:`decode_github_body` handles both delivery
content types; the two ``verify_*`` functions compare secrets in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import typing as t
from dataclasses import dataclass
from urllib.parse import parse_qs

ZERO_SHA = "0" * 40


class MalformedDelivery(ValueError):
    """The body or headers cannot be understood (the webhook answers 400 with this message)."""


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
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


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


Event = PushEvent | CommentEvent | Ping | Ignored


# --- verification --------------------------------------------------------------------------


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the HMAC-SHA256 of the raw body under ``secret`` (constant time)."""
    if not header:
        return False
    return hmac.compare_digest(github_signature(secret, body).encode(), header.strip().encode())


def verify_gitlab_token(secret: str, header: str | None) -> bool:
    """Whether ``X-Gitlab-Token`` equals the configured secret (constant time)."""
    if header is None:
        return False
    return hmac.compare_digest(secret.encode(), header.encode())


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
    if not isinstance(payload, dict):
        raise MalformedDelivery("body is JSON but not an object")
    return payload


def _get(payload: t.Mapping[str, t.Any], *path: str, required: bool = True) -> t.Any:
    node: t.Any = payload
    for part in path:
        if not isinstance(node, dict) or part not in node:
            if required:
                raise MalformedDelivery(f"payload lacks `{'.'.join(path)}`")
            return None
        node = node[part]
    return node


def _branch_of(ref: str) -> str | None:
    return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None


# --- GitHub --------------------------------------------------------------------------------

GITHUB_EVENTS = ("ping", "push", "issue_comment")


def parse_github(event: str, delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    """Normalise one GitHub delivery (``X-GitHub-Event`` = ``event``)."""
    if event == "ping":
        return Ping("github", delivery_id, str(payload.get("zen") or ""))
    if event == "push":
        ref = str(_get(payload, "ref"))
        if ref.startswith("refs/tags/"):
            return Ignored(f"tag push ({ref}) is not ingested")
        branch = _branch_of(ref)
        if branch is None:
            return Ignored(f"push to {ref} is not a branch")
        after = str(_get(payload, "after"))
        if payload.get("deleted") or after == ZERO_SHA:
            return Ignored(f"branch {branch} was deleted")
        repo = _get(payload, "repository")
        return PushEvent(
            forge="github", repo=str(_get(repo, "full_name")),
            clone_url=str(repo.get("clone_url") or ""), ref=ref, branch=branch,
            before=str(payload.get("before") or ZERO_SHA), after=after,
            pusher=str((payload.get("pusher") or {}).get("name") or (payload.get("sender") or {}).get("login") or ""),
            commit_count=len(payload.get("commits") or []), delivery_id=delivery_id,
            default_branch=repo.get("default_branch"), forced=bool(payload.get("forced")),
        )
    if event == "issue_comment":
        issue = _get(payload, "issue")
        comment = _get(payload, "comment")
        user = comment.get("user") or {}
        return CommentEvent(
            forge="github", repo=str(_get(payload, "repository", "full_name")), project_id=None,
            number=int(_get(issue, "number")), comment_id=int(_get(comment, "id")),
            author=str(user.get("login") or ""), author_id=user.get("id"),
            body=str(comment.get("body") or ""), action=str(payload.get("action") or ""),
            on_review="pull_request" in issue, head_sha=None, delivery_id=delivery_id,
        )
    return Ignored(f"GitHub event {event!r} is not used (handled: {', '.join(GITHUB_EVENTS)})")


# --- GitLab --------------------------------------------------------------------------------

GITLAB_EVENTS = ("Push Hook", "Note Hook", "Merge Request Hook")


def parse_gitlab(event: str, delivery_id: str, payload: t.Mapping[str, t.Any]) -> Event:
    """Normalise one GitLab delivery (``X-Gitlab-Event`` = ``event``)."""
    if event == "Push Hook":
        ref = str(_get(payload, "ref"))
        branch = _branch_of(ref)
        if branch is None:
            return Ignored(f"push to {ref} is not a branch")
        after = str(_get(payload, "after"))
        if after == ZERO_SHA:
            return Ignored(f"branch {branch} was deleted")
        project = _get(payload, "project")
        return PushEvent(
            forge="gitlab", repo=str(_get(project, "path_with_namespace")),
            clone_url=str(project.get("git_http_url") or ""), ref=ref, branch=branch,
            before=str(payload.get("before") or ZERO_SHA), after=after,
            pusher=str(payload.get("user_username") or payload.get("user_name") or ""),
            commit_count=int(payload.get("total_commits_count") or len(payload.get("commits") or [])),
            delivery_id=delivery_id, default_branch=project.get("default_branch"),
            project_id=payload.get("project_id") or project.get("id"),
        )
    if event == "Tag Push Hook":
        return Ignored("tag push is not ingested")
    if event == "Note Hook":
        attrs = _get(payload, "object_attributes")
        user = payload.get("user") or {}
        project = _get(payload, "project")
        on_mr = attrs.get("noteable_type") == "MergeRequest"
        mr = payload.get("merge_request") or {}
        return CommentEvent(
            forge="gitlab", repo=str(_get(project, "path_with_namespace")),
            project_id=payload.get("project_id") or project.get("id"),
            number=int(mr.get("iid") or 0), comment_id=int(_get(attrs, "id")),
            author=str(user.get("username") or ""), author_id=user.get("id"),
            body=str(attrs.get("note") or ""), action=str(attrs.get("action") or "create"),
            on_review=on_mr and bool(mr), head_sha=(mr.get("last_commit") or {}).get("id"),
            delivery_id=delivery_id,
        )
    if event == "Merge Request Hook":
        _get(payload, "object_attributes")
        return Ignored("merge request events need no action: a merge arrives as a Push Hook")
    return Ignored(f"GitLab event {event!r} is not used (handled: {', '.join(GITLAB_EVENTS)})")


def gitlab_delivery_id(headers: t.Mapping[str, str], body: bytes) -> str:
    """GitLab's stable id for a delivery: ``Idempotency-Key`` (same across retries), else the event
    UUID, else a hash of the body (so a byte-identical redelivery is still recognised)."""
    for name in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = headers.get(name)
        if value:
            return value
    return "sha256:" + hashlib.sha256(body).hexdigest()
