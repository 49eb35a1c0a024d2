"""Chat-ops when two repositories feed the one model: shared-model commands need the level on
both (or an operator), and ``status`` / ``eval`` from one repository do not show the other.

End to end on both forges (signed webhook → ``control`` queue → real worker → local forge).
``acme/web`` is where the comments are; ``acme/payroll`` (configured name ``payroll``) also
feeds the model. Users: ``mia`` maintains web but only reads payroll, ``ada`` maintains both,
``olga`` may only write to web and is a chat-ops operator, ``alice`` may write to web.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq import Queue

from bot import config
from bot.chatops.auth import LevelCache, decide_shared, is_operator
from bot.chatops.scope import OTHER, hidden_names, redact, scope_status
from bot.config import ChatopsSettings, GitHubSettings, GitLabSettings, RepoConfig, Settings
from bot.errors import ForgeError
from tests.fixtures.forge import GITHUB_TOKEN, GITLAB_TOKEN, LocalForge
from tests.test_chatops_commands import GH_SECRET, GL_SECRET, MR, PR, PROJECT_ID, Chat, _run

PAYROLL_ID = 43
GH = {"web": {"alice": "write", "mia": "maintain", "ada": "maintain", "olga": "write"},
      "payroll": {"mia": "read", "ada": "maintain"}}
GL = {"web": {"alice": 30, "mia": 40, "ada": 40, "olga": 30},
      "payroll": {"mia": 20, "ada": 40}}


def _repos(tmp_path: Path, forge: str, extra: tuple[RepoConfig, ...] = ()) -> list[RepoConfig]:
    gitlab = forge == "gitlab"
    return [RepoConfig(name="web", url=(tmp_path / "web.git").as_uri(), forge=forge,
                       full_name="acme/web", project_id=PROJECT_ID if gitlab else None),
            RepoConfig(name="payroll", url=(tmp_path / "payroll.git").as_uri(), forge=forge,
                       full_name="acme/payroll", branch="release",
                       project_id=PAYROLL_ID if gitlab else None), *extra]


@pytest.fixture(params=["github", "gitlab"])
def shared(request, local_forge: LocalForge, redis_url: str, tmp_path: Path):
    from bot.webhook import create_app

    local_forge.add_github_repo("acme/web", GH["web"], pulls=(PR,))
    local_forge.add_github_repo("acme/payroll", GH["payroll"])
    web = local_forge.add_gitlab_project("acme/web", PROJECT_ID, GL["web"], merge_requests=(MR,))
    payroll = local_forge.add_gitlab_project("acme/payroll", PAYROLL_ID, GL["payroll"])
    # GitLab user ids are instance-wide: the same person has the same id in both projects.
    for user, (_, level) in payroll.members.items():
        payroll.members[user] = (web.members[user][0], level)
    settings = Settings(
        home=tmp_path / "home", redis_url=redis_url, status_page_url="http://status.test",
        github=GitHubSettings(api_url=local_forge.github_api_url, token=GITHUB_TOKEN,
                              webhook_secret=GH_SECRET),
        gitlab=GitLabSettings(url=local_forge.gitlab_url, token=GITLAB_TOKEN,
                              webhook_token=GL_SECRET),
        chatops=ChatopsSettings(bot_username="repotune-bot", operators=["olga"]),
        repos=_repos(tmp_path, request.param))
    config.set_current(settings)
    yield Chat(request.param, local_forge, settings, redis.Redis.from_url(redis_url),
               create_app(settings))
    config.set_current(None)


def _level(chat: Chat, role: str) -> str:
    names = {"read": "Reporter (20)", "maintain": "Maintainer (40)"}
    return role if chat.forge_name == "github" else names[role]


def _permission_calls(chat: Chat, repo: str) -> int:
    if chat.forge_name == "github":
        return len(chat.forge.calls_to("github", "GET", rf"/repos/{repo}/collaborators/.+/permission"))
    project = PROJECT_ID if repo == "acme/web" else PAYROLL_ID
    return len(chat.forge.calls_to("gitlab", "GET", rf"/projects/{project}/members/all/\d+$"))


def test_a_maintainer_of_one_repository_cannot_act_on_the_shared_model(shared: Chat):
    from bot import scheduler

    deploy = Queue("deploy", connection=shared.conn)
    (reply,) = shared.say("mia", "/repotune rollback")
    assert reply == (f"@mia :no_entry: `rollback` acts on the model that every configured "
                     f"repository feeds: it needs {_level(shared, 'maintain')} access to "
                     f"acme/payroll too, which feeds the same model; you have "
                     f"{_level(shared, 'read')} there. Ask someone with that access to every "
                     "repository, or an operator (`chatops.operators`).")
    assert deploy.count == 0
    assert shared.results[-1] == {"handled": True, "command": "rollback", "allowed": False,
                                  "repo": "acme/payroll"}
    (reply,) = shared.say("mia", "/repotune pause")
    assert "acme/payroll" in reply and not scheduler.is_paused(shared.conn)
    # Commands on the comment's repository alone still work for her.
    (reply,) = shared.say("mia", "/repotune retrain")
    assert ":rocket: Queued a training of `web`" in reply


def test_a_maintainer_of_every_repository_can_and_each_is_asked_once(shared: Chat):
    deploy = Queue("deploy", connection=shared.conn)
    (reply,) = shared.say("ada", "/repotune rollback 2")
    (job,) = [deploy.fetch_job(j) for j in deploy.job_ids]
    assert (job.func_name, job.args) == ("bot.jobs.rollback_job", (2,))
    assert reply == f"@ada :leftwards_arrow_with_hook: Rolling back to version 2 (job `{job.id}`)."
    assert (_permission_calls(shared, "acme/web"), _permission_calls(shared, "acme/payroll")) \
        == (1, 1)


def test_an_operator_can_without_the_levels(shared: Chat):
    from bot import scheduler

    deploy = Queue("deploy", connection=shared.conn)
    (reply,) = shared.say("olga", "/repotune rollback")
    assert "Rolling back to the previous version" in reply and deploy.count == 1
    (reply,) = shared.say("olga", "/repotune pause")
    assert "paused" in reply and scheduler.is_paused(shared.conn)
    assert _permission_calls(shared, "acme/payroll") == 0  # an operator needs no lookup there
    # The allowlist is for shared-model commands only; alice (same level, no operator) is refused.
    (reply,) = shared.say("alice", "/repotune resume")
    assert reply.endswith(f"needs {_level(shared, 'maintain')} access to acme/web; you have "
                          f"{'write' if shared.forge_name == 'github' else 'Developer (30)'}.")
    assert scheduler.is_paused(shared.conn)


def test_a_repository_on_another_forge_means_operators_only(shared: Chat, tmp_path: Path):
    other = "gitlab" if shared.forge_name == "github" else "github"
    shared.settings.repos = _repos(tmp_path, shared.forge_name, (
        RepoConfig(name="infra", url=(tmp_path / "infra.git").as_uri(), forge=other,
                   full_name="ops/infra", project_id=77 if other == "gitlab" else None),))
    (reply,) = shared.say("ada", "/repotune rollback")
    assert f"ops/infra ({other}) feeds the same model and your {shared.forge_name} account " \
           "cannot be checked there; only an operator (`chatops.operators`) may run it." in reply
    assert Queue("deploy", connection=shared.conn).count == 0
    (reply,) = shared.say("olga", "/repotune rollback")
    assert "Rolling back" in reply


def test_status_from_one_repository_does_not_show_the_other(shared: Chat):
    own = _run(shared.settings, "ingesting", "training", "evaluating", "rejected")
    theirs = _run(shared.settings, "ingesting", "failed", repo="payroll",
                  trigger={"kind": "push", "forge": shared.forge_name, "repo": "acme/payroll",
                           "commit": "c0ffee" * 6, "requested_by": "ada"})
    (reply,) = shared.say("alice", "/repotune status")
    assert f"| `{own.id}` | rejected | web |" in reply
    assert f"| `{theirs.id}` | failed | {OTHER} |" in reply  # the model's history, anonymised
    assert "| web | not built |" in reply
    for secret in ("payroll", "release", "c0ffee", "@ada"):
        assert secret not in reply


def test_eval_report_names_no_other_repository(shared: Chat):
    home = shared.settings.home
    report = (f"3 held-out tasks, corpus version `payroll:2,payroll@release:1,web:3`.\n\n"
              f"- Candidate: `{home}/runs/x/checkpoint`\n\n| edit similarity | 0.58 | 0.61 |")
    run = _run(shared.settings, "ingesting", "training", "evaluating", "rejected",
               report=report, checkpoint="/x")
    (reply,) = shared.say("alice", f"/repotune eval --run {run.id}")
    assert f"corpus version `{OTHER}:2,{OTHER}:1,web:3`" in reply
    assert "- Candidate: `<home>/runs/x/checkpoint`" in reply
    assert "| edit similarity | 0.58 | 0.61 |" in reply  # gate scores are model-wide
    assert "payroll" not in reply and str(home) not in reply


# ------------------------------------------------------------------ the pure parts


def _feeders(*specs: tuple[str, str]) -> list[RepoConfig]:
    return [RepoConfig(name=n, url=f"file:///{n}.git", forge=f, full_name=f"acme/{n}")
            for n, f in specs]


def test_decide_shared_names_the_first_repository_missing_the_level():
    feeders = _feeders(("web", "github"), ("lib", "github"), ("api", "github"))
    levels = {"acme/web": "admin", "acme/lib": "maintain", "acme/api": "write"}
    asked: list[str] = []

    def lookup(repo: RepoConfig) -> str:
        asked.append(str(repo.full_name))
        return levels[str(repo.full_name)]

    cache = LevelCache(lookup)
    cache.seed(feeders[0], "admin")
    no = decide_shared("github", "mia", feeders, "maintain", cache)
    assert (no.allowed, no.repo) == (False, "acme/api")
    assert "you have write there" in no.reason
    assert decide_shared("github", "mia", feeders, "maintain", cache).repo == "acme/api"
    assert asked == ["acme/lib", "acme/api"]  # the seeded one never, each other once
    assert decide_shared("github", "mia", feeders, "write", cache).allowed
    assert decide_shared("github", "Mia", feeders, "admin", cache, ["github:mia"]).allowed


def test_decide_shared_refuses_what_it_cannot_check():
    def down(repo: RepoConfig) -> int:
        raise ForgeError("GitLab answered 502")

    feeders = _feeders(("web", "gitlab"), ("lib", "gitlab"))
    no = decide_shared("gitlab", "mia", feeders, 40, down)
    assert (no.allowed, no.repo) == (False, "acme/web")
    assert "could not be checked (GitLab answered 502)" in no.reason
    local = _feeders(("web", "gitlab"), ("mirror", "local"))
    no = decide_shared("gitlab", "mia", local, 40, lambda repo: 50)
    assert (no.allowed, no.repo) == (False, "acme/mirror")


def test_operators_match_per_forge():
    assert is_operator(["olga"], "gitlab", "OLGA")
    assert is_operator(["gitlab:olga"], "gitlab", "olga")
    assert not is_operator(["gitlab:olga"], "github", "olga")
    assert not is_operator(["olga"], "github", "olgas")
    assert not is_operator([], "github", "olga")


def test_scope_status_is_a_whitelist():
    data = {"home": "/srv/repotune", "serving": {"version": 4, "versions": [3, 4],
                                                 "triton_url": "http://triton:8001"},
            "repositories": [{"name": "web", "corpus": {}}, {"name": "payroll", "url": "x"}],
            "runs": [{"id": "r1", "status": "serving", "repo": "payroll", "version": 4,
                      "trigger": {"commit": "abc"}, "error": "boom in payroll"}],
            "pending": {"payroll": 3}, "freshness": {"payroll": []}, "paused": False}
    scoped = scope_status(data, "web")
    assert scoped == {"serving": {"version": 4, "versions": [3, 4]}, "paused": False,
                      "repositories": [{"name": "web", "corpus": {}}],
                      "runs": [{"id": "r1", "status": "serving", "created": None, "version": 4,
                                "repo": OTHER}]}


def test_redact_replaces_whole_names_only():
    repos = _feeders(("web", "github"), ("web-admin", "github"))
    hidden = hidden_names(repos, "web")
    assert hidden == ["file:///web-admin.git", "acme/web-admin", "web-admin"]
    assert redact("web-admin:2,web:3 from acme/web-admin", hidden) == \
        f"{OTHER}:2,web:3 from {OTHER}"
    assert redact("web:3", hidden_names(repos, "web-admin")) == f"{OTHER}:3"
