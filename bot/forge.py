"""Forge clients: the few GitHub and GitLab REST calls RepoTune makes, behind one interface.

``Forge`` is the seam: chat-ops and reporting call ``react``, ``comment``, ``set_status`` and
``permission`` and never see pygithub or python-gitlab. :func:`forge_for` builds the client a
setting names (GitHub or GitHub Enterprise through ``github.api_url``; self-hosted GitLab through
``gitlab.url``). Every error from the underlying library becomes :class:`bot.errors.ForgeError`
(chained with ``from``), whose message names the call and what to check, and never a token.

Commit-status states are forge-neutral here (``pending``, ``success``, ``failure``, ``error``);
each implementation maps them onto its forge's words.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from bot.errors import ConfigError, ForgeError

log = logging.getLogger(__name__)

T = TypeVar("T")

GITHUB_ROLES = ("none", "read", "triage", "write", "maintain", "admin")
"""GitHub repository roles, weakest first (the collaborator-permission endpoint's ``role_name``)."""

GITLAB_LEVELS = {0: "none", 5: "minimal", 10: "guest", 15: "planner", 20: "reporter",
                 30: "developer", 40: "maintainer", 50: "owner"}
"""GitLab member access levels and their names."""

NEUTRAL_STATES = ("pending", "success", "failure", "error")

_GITLAB_STATE = {"pending": "pending", "running": "running", "success": "success",
                 "failure": "failed", "error": "failed", "canceled": "canceled"}


@dataclass(frozen=True)
class Target:
    """Where a comment or reaction goes: a pull/merge request of one repository."""

    repo: str
    """``owner/name`` (GitHub full name, GitLab path with namespace)."""
    number: int
    """Pull-request number (GitHub) or merge-request iid (GitLab)."""
    project_id: int | None = None
    """GitLab project id when known (saves resolving the path)."""


def target_of(where: Any) -> Target:
    """Accept a ``CommentEvent`` (or its dict), a ``Target`` or a ``(repo, number)`` pair."""
    if isinstance(where, Target):
        return where
    if isinstance(where, tuple) and len(where) == 2:
        return Target(str(where[0]), int(where[1]))
    if isinstance(where, dict):
        return Target(str(where["repo"]), int(where["number"]), where.get("project_id"))
    return Target(str(where.repo), int(where.number), getattr(where, "project_id", None))


@runtime_checkable
class Forge(Protocol):
    """What RepoTune asks of a forge."""

    name: str

    def react(self, event: Any, reaction: str = "eyes") -> None:
        """Acknowledge a comment (``event``: CommentEvent or its dict) with a reaction:
        ``eyes`` (seen) or ``+1`` (done)."""

    def comment(self, where: Any, body: str) -> int:
        """Post ``body`` (markdown) on a pull/merge request; returns the new comment's id."""

    def set_status(self, repo: str, sha: str, context: str, state: str,
                   description: str, target_url: str | None = None) -> None:
        """Set commit status ``context`` on ``sha`` to a neutral ``state``."""

    def permission(self, repo: str, user: str | int, project_id: int | None = None) -> Any:
        """The user's access to ``repo``: a GitHub role name or a GitLab access level
        (``project_id`` spares GitLab a path lookup; GitHub ignores it)."""


def _secret(value: Any) -> str | None:
    """Settings may hold a plain string or an object with ``get_secret_value``."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value) or None


# --------------------------------------------------------------------------- GitHub


class GitHubForge:
    """GitHub or GitHub Enterprise through pygithub.

    ``api_url`` is ``https://api.github.com``, ``https://<host>/api/v3`` for Enterprise, or a
    local test forge. Authenticate with a token, or as a GitHub App installation
    (``app_id`` + ``private_key`` + ``installation_id``; pygithub refreshes the token).
    ``throttle`` spaces requests out (0.25 s, writes 1 s) as github.com asks; by default only
    for github.com itself.
    """

    name = "github"

    def __init__(self, api_url: str = "https://api.github.com", token: str | None = None, *,
                 app_id: int | str | None = None, private_key: str | None = None,
                 installation_id: int | None = None, timeout: float = 15.0,
                 retries: int = 2, throttle: bool | None = None) -> None:
        import github
        from github import Auth

        if token:
            auth: Any = Auth.Token(token)
        elif app_id and private_key and installation_id:
            auth = Auth.AppAuth(int(app_id), private_key).get_installation_auth(int(installation_id))
        else:
            raise ConfigError(
                "GitHub credentials are missing: set REPOTUNE_GITHUB_TOKEN (or _FILE), or "
                "github.app_id, github.app_private_key_file and github.installation_id")
        self.api_url = api_url.rstrip("/")
        # github.com's secondary rate limits want writes spaced out (pygithub's defaults);
        # GitHub Enterprise Server has rate limiting off unless its admin turns it on.
        if throttle is None:
            throttle = self.api_url == "https://api.github.com"
        spacing = {} if throttle else {"seconds_between_requests": None,
                                       "seconds_between_writes": None}
        # lazy: objects are addressed by URL without a GET first, so one action is one request.
        self._gh = github.Github(base_url=self.api_url, auth=auth, timeout=int(timeout),
                                 retry=retries, lazy=True, per_page=100, **spacing)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from github import GithubException

        try:
            return fn()
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else exc.data
            raise ForgeError(f"GitHub {what} failed at {self.api_url}: HTTP {exc.status} "
                             f"{message}; check the token's scopes and the repository name"
                             ) from exc
        except Exception as exc:  # requests/urllib3 transport errors
            raise ForgeError(f"GitHub {what} failed at {self.api_url}: {type(exc).__name__}: "
                             f"{exc}; check github.api_url and the network") from exc

    def _repo(self, repo: str) -> Any:
        return self._gh.get_repo(repo)

    def react(self, event: Any, reaction: str = "eyes") -> None:
        ev = event if isinstance(event, dict) else vars(event)
        repo, number, comment_id = ev["repo"], int(ev["number"]), int(ev["comment_id"])
        self._call(f"reaction on comment {comment_id} in {repo}", lambda: self._repo(repo)
                   .get_issue(number).get_comment(comment_id).create_reaction(reaction))

    def comment(self, where: Any, body: str) -> int:
        t = target_of(where)
        made = self._call(f"comment on {t.repo}#{t.number}",
                          lambda: self._repo(t.repo).get_issue(t.number).create_comment(body))
        return int(made.id)

    def set_status(self, repo: str, sha: str, context: str, state: str,
                   description: str, target_url: str | None = None) -> None:
        if state not in NEUTRAL_STATES:
            raise ValueError(f"state {state!r} is not one of {NEUTRAL_STATES}")
        from github.GithubObject import NotSet

        self._call(f"status {context} on {repo}@{sha[:12]}", lambda: self._repo(repo)
                   .get_commit(sha).create_status(state, target_url or NotSet,
                                                  description[:140], context))

    def permission(self, repo: str, user: str | int, project_id: int | None = None) -> str:
        """The role name (``admin``, ``maintain``, ``write``, ``triage``, ``read``, ``none``).

        ``role_name`` is used rather than ``permission`` because the latter folds maintain
        into write and triage into read. A user who is no collaborator gets ``none``.
        """
        from github import GithubException

        try:
            role = self._call(f"permission of {user} on {repo}",
                              lambda: self._repo(repo).get_collaborator_role_name(str(user)))
        except ForgeError as exc:
            cause = exc.__cause__
            if isinstance(cause, GithubException) and cause.status == 404:
                return "none"
            raise
        return role if role in GITHUB_ROLES else "none"


# --------------------------------------------------------------------------- GitLab


class GitLabForge:
    """GitLab.com or a self-hosted GitLab through python-gitlab (API v4)."""

    name = "gitlab"

    def __init__(self, url: str = "https://gitlab.com", token: str | None = None, *,
                 timeout: float = 15.0, retries: int = 0) -> None:
        import gitlab

        if not token:
            raise ConfigError("GitLab token is missing: set REPOTUNE_GITLAB_TOKEN (or _FILE)")
        self.url = url.rstrip("/")
        # python-gitlab retries transient errors up to 10 times; that is only worth it when
        # asked for (chat-ops replies should fail fast and say so).
        self._gl = gitlab.Gitlab(self.url, private_token=token, timeout=timeout,
                                 retry_transient_errors=retries > 0)
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from gitlab.exceptions import GitlabError

        try:
            return fn()
        except GitlabError as exc:
            raise ForgeError(f"GitLab {what} failed at {self.url}: HTTP {exc.response_code} "
                             f"{exc.error_message}; check the token's scope (api) and the "
                             "project path") from exc
        except Exception as exc:  # requests transport errors
            raise ForgeError(f"GitLab {what} failed at {self.url}: {type(exc).__name__}: "
                             f"{exc}; check gitlab.url and the network") from exc

    def _project(self, repo: str | int, project_id: int | None = None) -> Any:
        """A lazy project handle; a path is resolved to its numeric id once and cached."""
        if project_id is None:
            if isinstance(repo, int) or str(repo).isdigit():
                project_id = int(repo)
            else:
                with self._lock:
                    project_id = self._ids.get(str(repo))
                if project_id is None:
                    found = self._call(f"project lookup {repo}",
                                       lambda: self._gl.projects.get(str(repo)))
                    project_id = int(found.id)
                    with self._lock:
                        self._ids[str(repo)] = project_id
        return self._gl.projects.get(project_id, lazy=True)

    def react(self, event: Any, reaction: str = "eyes") -> None:
        ev = event if isinstance(event, dict) else vars(event)
        name = {"+1": "thumbsup", "-1": "thumbsdown"}.get(reaction, reaction)
        project = self._project(ev["repo"], ev.get("project_id"))
        mr = project.mergerequests.get(int(ev["number"]), lazy=True)
        note = mr.notes.get(int(ev["comment_id"]), lazy=True)
        self._call(f"award emoji on note {ev['comment_id']} in {ev['repo']}",
                   lambda: note.awardemojis.create({"name": name}))

    def comment(self, where: Any, body: str) -> int:
        t = target_of(where)
        mr = self._project(t.repo, t.project_id).mergerequests.get(t.number, lazy=True)
        made = self._call(f"note on {t.repo}!{t.number}",
                          lambda: mr.notes.create({"body": body}))
        return int(made.id)

    def set_status(self, repo: str, sha: str, context: str, state: str,
                   description: str, target_url: str | None = None) -> None:
        if state not in NEUTRAL_STATES:
            raise ValueError(f"state {state!r} is not one of {NEUTRAL_STATES}")
        from gitlab.exceptions import GitlabError

        commit = self._project(repo).commits.get(sha, lazy=True)
        data = {"state": _GITLAB_STATE[state], "name": context, "description": description[:255]}
        if target_url:
            data["target_url"] = target_url
        try:
            self._call(f"status {context} on {repo}@{sha[:12]}",
                       lambda: commit.statuses.create(data))
        except ForgeError as exc:
            # GitLab refuses to "move" a status to the state it already has; that is a no-op.
            cause = exc.__cause__
            if isinstance(cause, GitlabError) and "Cannot transition status" in str(
                    cause.error_message):
                log.debug("status %s on %s@%s already %s", context, repo, sha[:12], state)
                return
            raise

    def permission(self, repo: str, user: str | int, project_id: int | None = None) -> int:
        """The user's access level including inherited membership (0 when not a member).

        ``user`` is a numeric user id (exact) or a username (searched, then matched exactly).
        """
        from gitlab.exceptions import GitlabGetError

        project = self._project(repo, project_id)
        if isinstance(user, int) or str(user).isdigit():
            try:
                member = self._call(f"membership of user {user} in {repo}",
                                    lambda: project.members_all.get(int(user)))
            except ForgeError as exc:
                if isinstance(exc.__cause__, GitlabGetError) and \
                        exc.__cause__.response_code == 404:
                    return 0
                raise
            return _active_level(member.attributes)
        found = self._call(f"membership of {user} in {repo}",
                           lambda: project.members_all.list(query=str(user), get_all=True))
        for member in found:
            if member.attributes.get("username") == str(user):
                return _active_level(member.attributes)
        return 0


def _active_level(attrs: dict) -> int:
    if attrs.get("state", "active") != "active":
        return 0  # blocked or awaiting users have no say
    return int(attrs.get("access_level") or 0)


# --------------------------------------------------------------------------- factory

_cache: dict[tuple, Forge] = {}
_cache_lock = threading.Lock()


def forge_for(settings: Any, name: str) -> Forge:
    """The client for forge ``name`` (``github`` or ``gitlab``) configured by ``settings``.

    Clients are cached per (forge, URL, credential identity) so a worker reuses connections.
    """
    if name == "github":
        gh = settings.github
        api_url = getattr(gh, "api_url", None) or "https://api.github.com"
        token = _secret(getattr(gh, "token", None))
        app_id = getattr(gh, "app_id", None)
        key_file = getattr(gh, "app_private_key_file", None)
        installation = getattr(gh, "installation_id", None)
        key = ("github", api_url, token, app_id, str(key_file), installation)

        def build() -> Forge:
            private_key = None
            if not token and key_file:
                try:
                    private_key = Path(key_file).read_text()
                except OSError as exc:
                    raise ConfigError(f"github.app_private_key_file {key_file} cannot be "
                                      f"read ({exc.strerror}); point it at the App's PEM key"
                                      ) from exc
            return GitHubForge(api_url, token, app_id=app_id, private_key=private_key,
                               installation_id=installation)
    elif name == "gitlab":
        gl = settings.gitlab
        url = getattr(gl, "url", None) or "https://gitlab.com"
        token = _secret(getattr(gl, "token", None))
        key = ("gitlab", url, token)

        def build() -> Forge:
            return GitLabForge(url, token)
    else:
        raise ConfigError(f"forge {name!r} has no client; use 'github' or 'gitlab'")
    with _cache_lock:
        client = _cache.get(key)
        if client is None:
            client = _cache[key] = build()
        return client
