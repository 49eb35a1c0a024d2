"""Who may run a chat-ops command: the forge's level for the commenter against the least level
configured per command (``chatops.github_levels`` / ``chatops.gitlab_levels``). Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Settings

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
