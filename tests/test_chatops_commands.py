"""Chat-ops end to end on both forges: a signed comment webhook → the ``control`` queue → a real
RQ worker runs ``handle_comment_job`` → the reply lands on the local forge, which records it.

Users on both forges: ``alice`` may write (GitHub write / GitLab Developer), ``mia`` maintains
(maintain / Maintainer), ``bob`` only reads (read / Reporter).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from bot import config
from bot.config import ChatopsSettings, GitHubSettings, GitLabSettings, RepoConfig, Settings
from bot.runs import RunStatus, new_run, save_run, transition
from tests.fixtures.forge import GITHUB_TOKEN, GITLAB_TOKEN, LocalForge

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
GH_SECRET = "gh-webhook-secret"
GL_SECRET = "gl-webhook-token"
PR, MR, PROJECT_ID = 7, 3, 42


@dataclass
class Chat:
    """One forge, one configured repository, a webhook app, Redis, and a way to comment."""

    forge_name: str
    forge: LocalForge
    settings: Settings
    conn: redis.Redis
    app: Any = None
    results: list = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def replies(self) -> list[str]:
        if self.forge_name == "github":
            return self.forge.github_comments("acme/web", PR)
        return self.forge.gitlab_notes(PROJECT_ID, MR)

    def acks(self) -> list[str]:
        if self.forge_name == "github":
            return [r["content"] for r in self.forge.github_repos["acme/web"].reactions]
        return [a["name"] for a in self.forge.gitlab_projects[PROJECT_ID].awards]

    def payload(self, user: str, body: str, action: str | None = None) -> tuple[dict, dict]:
        """A real-format delivery for a comment ``user`` just wrote (it exists on the forge)."""
        if self.forge_name == "github":
            cid = self.forge.add_github_comment("acme/web", PR, user, body)
            data = json.loads((PAYLOADS / "github" / "issue_comment-created.json").read_text())
            data["action"] = action or "created"
            data["repository"]["full_name"] = "acme/web"
            data["issue"]["number"] = PR
            data["issue"]["pull_request"] = {"url": f"{self.forge.github_api_url}/repos/acme/"
                                                    f"web/pulls/{PR}"}
            data["comment"].update(id=cid, body=body)
            data["comment"]["user"] = {"login": user, "id": self.forge.github_users[user]}
            headers = {"X-GitHub-Event": "issue_comment",
                       "X-GitHub-Delivery": f"d-{next(self._ids)}"}
            return data, headers
        nid = self.forge.add_gitlab_note(PROJECT_ID, MR, user, body)
        data = json.loads((PAYLOADS / "gitlab" / "note-merge-request.json").read_text())
        data["project_id"] = PROJECT_ID
        data["project"].update(id=PROJECT_ID, path_with_namespace="acme/web")
        data["merge_request"]["iid"] = MR
        data["object_attributes"].update(id=nid, note=body, action=action or "create",
                                         noteable_type="MergeRequest")
        members = self.forge.gitlab_projects[PROJECT_ID].members
        data["user"] = {"id": members.get(user, (1, 0))[0], "username": user, "name": user}
        headers = {"X-Gitlab-Event": "Note Hook", "Idempotency-Key": f"d-{next(self._ids)}"}
        return data, headers

    def say(self, user: str, body: str, action: str | None = None) -> list[str]:
        """Comment as ``user``, deliver the signed webhook, run the queued job; new replies."""
        before = len(self.replies())
        data, headers = self.payload(user, body, action)
        raw = json.dumps(data).encode()
        if self.forge_name == "github":
            mac = hmac.new(GH_SECRET.encode(), raw, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={mac}"
            url = "/webhooks/github"
        else:
            headers["X-Gitlab-Token"] = GL_SECRET
            url = "/webhooks/gitlab"
        control = Queue("control", connection=self.conn)
        if self.app is not None:
            response = self.app.test_client().post(url, data=raw, headers=headers,
                                                   content_type="application/json")
            assert response.status_code in (200, 202), response.get_data(as_text=True)
        else:  # until bot.webhook lands: the job it would enqueue, from the same payload
            from bot.events import parse_github, parse_gitlab

            parse = parse_github if self.forge_name == "github" else parse_gitlab
            event = parse(headers.get("X-GitHub-Event") or headers["X-Gitlab-Event"], "d", data)
            control.enqueue("bot.chatops.handle_comment_job", event.as_dict())
        jobs = [control.fetch_job(j) for j in control.job_ids]
        SimpleWorker([control], connection=self.conn).work(burst=True)
        for job in jobs:
            job.refresh()
            assert job.is_finished, job.latest_result().exc_string if job.latest_result() else job
            self.results.append(job.return_value())
        return self.replies()[before:]


@pytest.fixture(params=["github", "gitlab"])
def chat(request, local_forge: LocalForge, redis_url: str, tmp_path: Path):
    try:
        from bot.webhook import create_app
    except ImportError:
        create_app = None
    local_forge.add_github_repo("acme/web", {"alice": "write", "mia": "maintain", "bob": "read"},
                                pulls=(PR,))
    local_forge.add_gitlab_project("acme/web", PROJECT_ID,
                                   {"alice": 30, "mia": 40, "bob": 20}, merge_requests=(MR,))
    settings = Settings(
        home=tmp_path / "home", redis_url=redis_url, status_page_url="http://status.test",
        github=GitHubSettings(api_url=local_forge.github_api_url, token=GITHUB_TOKEN,
                              webhook_secret=GH_SECRET),
        gitlab=GitLabSettings(url=local_forge.gitlab_url, token=GITLAB_TOKEN,
                              webhook_token=GL_SECRET),
        chatops=ChatopsSettings(bot_username="repotune-bot"),
        repos=[RepoConfig(name="web", url=(tmp_path / "nowhere.git").as_uri(),
                          forge=request.param, full_name="acme/web",
                          project_id=PROJECT_ID if request.param == "gitlab" else None)],
    )
    config.set_current(settings)
    conn = redis.Redis.from_url(redis_url)
    yield Chat(request.param, local_forge, settings, conn,
               create_app(settings) if create_app else None)
    config.set_current(None)


def _run(settings: Settings, *steps: str, report: str | None = None, **fields) -> Any:
    run = new_run(repo="web", trigger={"kind": "push", "forge": "local"})
    for step in steps:
        transition(run, step)
    if report is not None:
        path = settings.home / "runs" / run.id / "report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        run.eval_report = str(path)
    for k, v in fields.items():
        setattr(run, k, v)
    save_run(settings.home, run)
    return run


def test_help_and_acknowledgement(chat: Chat):
    (reply,) = chat.say("bob", "/repotune help")
    assert reply.startswith("@bob **RepoTune commands**")
    assert "| `/repotune promote <run-id>` |" in reply
    need = "maintain" if chat.forge_name == "github" else "Maintainer (40)"
    assert f"| Serve the model of a run that passed or was rejected. | {need} |" in reply
    assert chat.acks() == ["eyes"]


def test_unknown_command_gets_help_with_a_suggestion(chat: Chat):
    (reply,) = chat.say("alice", "/repotune retrian --full\nthanks!")
    assert "Unknown command `retrian`. Did you mean `retrain`?" in reply
    assert "**RepoTune commands**" in reply


def test_bad_argument_is_refused_before_anything_runs(chat: Chat):
    (reply,) = chat.say("mia", "/repotune promote ../../etc; rm -rf")
    assert "needs exactly one run id" in reply
    (reply,) = chat.say("mia", "/repotune promote ../../etc")
    assert "is not a run id" in reply
    assert Queue("deploy", connection=chat.conn).count == 0


def test_pause_and_resume(chat: Chat):
    from bot import scheduler

    (denied,) = chat.say("alice", "/repotune pause")
    need = "maintain" if chat.forge_name == "github" else "Maintainer (40)"
    have = "write" if chat.forge_name == "github" else "Developer (30)"
    assert denied == f"@alice :no_entry: `pause` needs {need} access to acme/web; you have {have}."
    assert not scheduler.is_paused(chat.conn)

    (reply,) = chat.say("mia", "@repotune-bot pause")
    assert "Automatic retraining is paused" in reply
    assert scheduler.is_paused(chat.conn)
    (reply,) = chat.say("mia", "/repotune resume")
    assert "resumed" in reply
    assert not scheduler.is_paused(chat.conn)


def test_ignored_comments_get_no_reply(chat: Chat):
    assert chat.say("alice", "LGTM, /repotune status later") == []
    assert chat.say("alice", "/repotune status", action="edited" if chat.forge_name == "github"
                    else "update") == []
    # Its own comments (the local forge counts this one as the bot's): no loops.
    assert chat.say("repotune-bot", "/repotune help") == ["/repotune help"]
    assert chat.acks() == []
    handled = [r for r in chat.results if r is not None]
    assert all(not r["handled"] for r in handled)
    assert any("bot" in r["reason"] for r in handled)
