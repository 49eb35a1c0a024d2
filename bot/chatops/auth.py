"""Who may run a chat-ops command: the forge's level for the commenter against the least level
configured per command (``chatops.github_levels`` / ``chatops.gitlab_levels``), and for
commands that act on the shared model, that level on every repository feeding it. Pure: levels
come in through a lookup callable."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import BotError

if TYPE_CHECKING:
    from bot.config import RepoConfig, Settings

GITHUB_ROLES = ("none", "read", "triage", "write", "maintain", "admin")
"""GitHub repository roles, least first (``role_name`` of the collaborator-permission API)."""

GITLAB_NAMES = {10: "Guest", 15: "Planner", 20: "Reporter", 30: "Developer", 40: "Maintainer",
                50: "Owner"}
"""GitLab access levels and their names."""


def required_level(settings: Settings, forge: str, command: str) -> str | int:
    """The least level ``command`` needs on ``forge`` (settings.chatops.*_levels)."""
    chatops = settings.chatops
    if forge == "github":
        return (getattr(chatops, "github_levels", None) or {}).get(
            command, "read" if command == "help" else "maintain")
    return int((getattr(chatops, "gitlab_levels", None) or {}).get(
        command, 10 if command == "help" else 40))


def allowed(forge: str, have: str | int, need: str | int) -> bool:
    """Whether level ``have`` meets ``need`` (GitHub role names, GitLab access levels)."""
    if forge == "github":
        rank = {r: i for i, r in enumerate(GITHUB_ROLES)}
        return rank.get(str(have), 0) >= rank.get(str(need), len(GITHUB_ROLES))
    return int(have or 0) >= int(need)


def level_name(forge: str, level: str | int) -> str:
    """A level as a reply shows it: ``maintain``, ``Developer (30)``, ``no access``."""
    if forge == "github":
        return str(level)
    return f"{GITLAB_NAMES.get(int(level), 'no access' if not level else str(level))} ({level})" \
        if level else "no access"


# --------------------------------------------------------------------------- shared-model commands

SHARED_MODEL_COMMANDS = frozenset({"promote", "rollback", "canary", "pause", "resume"})
"""Commands that act on the model every feeding repository shares: the per-repository level of
the comment's repository is not enough for them (see :func:`decide_shared`)."""

Lookup = Callable[["RepoConfig"], "str | int"]
"""The commenter's level on one configured repository (a GitHub role name or GitLab level);
may raise :class:`~bot.errors.BotError` when the forge cannot answer."""


@dataclass(frozen=True)
class Decision:
    """Whether a shared-model command may run, and the sentence that says why."""

    allowed: bool
    reason: str
    """For a refusal, the sentence the reply carries; for a grant, what granted it (logs)."""
    repo: str | None = None
    """The forge path of the repository where the level was missing or could not be checked."""


def model_feeders(settings: Settings) -> list[RepoConfig]:
    """The repositories whose corpora train the one implicit model: every ``[[repos]]`` entry.
    With ``[[models]]``, a command on one model checks that model's repositories instead
    (:func:`bot.chatops.job._check_model`); ``pause`` and ``resume``, which act on every model,
    still check all of them here."""
    return list(settings.repos)


def is_operator(operators: Iterable[str], forge: str, author: str) -> bool:
    """Whether ``author`` on ``forge`` is in ``chatops.operators``: ``name`` matches on any forge,
    ``github:name`` / ``gitlab:name`` only there (usernames compared case-insensitively, as the
    forges do)."""
    who = author.lower()
    for entry in operators:
        entry = entry.strip().lower()
        scope, _, name = entry.rpartition(":")
        if name == who and scope in ("", forge):
            return True
    return False


def _path(repo: RepoConfig) -> str:
    return str(repo.full_name or repo.name)


def decide_shared(forge: str, author: str, feeders: Sequence[RepoConfig], need: str | int,
                  lookup: Lookup, operators: Iterable[str] = ()) -> Decision:
    """May ``author`` (commenting on ``forge``) run a shared-model command needing ``need``?

    Allowed for an operator; otherwise only with ``need`` on EVERY feeding repository, so a
    maintainer of one small repository cannot roll back the model everyone uses. A repository
    on another forge (or ``local``, which has no users) cannot be checked with the commenter's
    identity, so its presence means operators only. The first repository that fails is named.
    """
    if is_operator(operators, forge, author):
        return Decision(True, f"{author} is a chat-ops operator")
    ask = "Ask someone with that access to every repository, or an operator (`chatops.operators`)."
    for repo in feeders:
        if repo.forge != forge:
            return Decision(False, f"{_path(repo)} ({repo.forge}) feeds the same model and your "
                                   f"{forge} account cannot be checked there; only an operator "
                                   "(`chatops.operators`) may run it.", _path(repo))
    for repo in feeders:
        try:
            have = lookup(repo)
        except BotError as exc:
            return Decision(False, f"your access to {_path(repo)}, which feeds the same model, "
                                   f"could not be checked ({exc}). Try again later. {ask}",
                            _path(repo))
        if not allowed(forge, have, need):
            return Decision(False, f"it needs {level_name(forge, need)} access to {_path(repo)} "
                                   f"too, which feeds the same model; you have "
                                   f"{level_name(forge, have)} there. {ask}", _path(repo))
    return Decision(True, f"{level_name(forge, need)} on every repository feeding the model")


class LevelCache:
    """The commenter's level per repository, each asked of the forge at most once per job."""

    def __init__(self, fetch: Lookup) -> None:
        self._fetch = fetch
        self._seen: dict[tuple[str, str, int | None], str | int] = {}

    @staticmethod
    def _key(repo: RepoConfig) -> tuple[str, str, int | None]:
        return repo.forge, _path(repo).lower(), repo.project_id

    def seed(self, repo: RepoConfig, level: str | int) -> None:
        """Record a level already looked up (the comment's own repository)."""
        self._seen[self._key(repo)] = level

    def __call__(self, repo: RepoConfig) -> str | int:
        key = self._key(repo)
        if key not in self._seen:
            self._seen[key] = self._fetch(repo)
        return self._seen[key]
