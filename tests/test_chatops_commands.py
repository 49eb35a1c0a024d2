"""Chat-ops end to end on both forges: a signed comment webhook → the ``control`` queue → a real
RQ worker runs ``handle_comment_job`` → the reply lands on the local forge, which records it.

Users on both forges: ``alice`` may write (GitHub write / GitLab Developer), ``mia`` maintains
(maintain / Maintainer), ``bob`` only reads (read / Reporter).
"""

from __future__ import annotations

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
from bot.runs import RunStatus, Trigger, new_run, save_run, transition
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

    def deliver(self, data: dict, headers: dict) -> Any:
        """Sign and post one delivery to the webhook app; the response."""
        raw = json.dumps(data).encode()
        headers = dict(headers)
        if self.forge_name == "github":
            mac = hmac.new(GH_SECRET.encode(), raw, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={mac}"
            url = "/webhooks/github"
        else:
            headers["X-Gitlab-Token"] = GL_SECRET
            url = "/webhooks/gitlab"
        return self.app.test_client().post(url, data=raw, headers=headers,
                                           content_type="application/json")

    def say(self, user: str, body: str, action: str | None = None) -> list[str]:
        """Comment as ``user``, deliver the signed webhook, run the queued job; new replies."""
        before = len(self.replies())
        response = self.deliver(*self.payload(user, body, action))
        assert response.status_code in (200, 202), response.get_data(as_text=True)
        self.work()
        return self.replies()[before:]

    def work(self) -> None:
        """Run the queued chat-ops jobs with a real burst worker; each must finish."""
        control = Queue("control", connection=self.conn)
        jobs = [control.fetch_job(j) for j in control.job_ids]
        SimpleWorker([control], connection=self.conn).work(burst=True)
        for job in jobs:
            job.refresh()
            assert job.is_finished, job.latest_result().exc_string if job.latest_result() else job
            self.results.append(job.return_value())


@pytest.fixture(params=["github", "gitlab"])
def chat(request, local_forge: LocalForge, redis_url: str, tmp_path: Path):
    from bot.webhook import create_app

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
    yield Chat(request.param, local_forge, settings, conn, create_app(settings))
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
        setattr(run, k, Trigger.from_dict(v) if k == "trigger" else v)
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
    assert "Automatic retraining of every model is paused" in reply
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
    # The webhook already drops these; the job checks again (it may be enqueued by other means).
    assert all(not r["handled"] for r in chat.results)
    assert Queue("control", connection=chat.conn).count == 0


@pytest.mark.parametrize("change, reason", [
    ({"action": "edited"}, "edits and deletions are ignored"),
    ({"action": "deleted"}, "edits and deletions are ignored"),
    ({"action": "update"}, "edits and deletions are ignored"),
    ({"on_review": False}, "not on a pull/merge request"),
    ({"author": "repotune-bot"}, "comment by a bot"),
    ({"author": "REPOTUNE-BOT[bot]"}, "comment by a bot"),
    ({"author": "dependabot[bot]"}, "comment by a bot"),
    ({"repo": "acme/other", "project_id": 99}, "is not configured"),
    ({"body": "nice work\n/repotune status"}, "not a command"),
])
def test_the_job_itself_ignores(chat: Chat, change: dict, reason: str):
    from bot.chatops import handle_comment_job

    event = {"forge": chat.forge_name, "repo": "acme/web", "project_id": PROJECT_ID,
             "number": PR, "comment_id": 1, "author": "mia", "author_id": None,
             "body": "/repotune pause", "action": "created", "on_review": True,
             "head_sha": None, "delivery_id": "x", **change}
    result = handle_comment_job(event, chat.settings)
    assert result["handled"] is False and reason in result["reason"]
    assert chat.forge.calls == []


def _denied(chat: Chat, user: str, command: str) -> str:
    github = {"alice": "write", "mia": "maintain", "bob": "read"}
    gitlab = {"alice": "Developer (30)", "mia": "Maintainer (40)", "bob": "Reporter (20)"}
    need = {"status": ("write", "Developer (30)"), "retrain": ("write", "Developer (30)"),
            "eval": ("write", "Developer (30)"), "promote": ("maintain", "Maintainer (40)"),
            "rollback": ("maintain", "Maintainer (40)")}[command]
    i = 0 if chat.forge_name == "github" else 1
    have = (github if i == 0 else gitlab)[user]
    return f"@{user} :no_entry: `{command}` needs {need[i]} access to acme/web; you have {have}."


def test_status(chat: Chat):
    run = _run(chat.settings, "ingesting", "training", "evaluating", "rejected")
    assert chat.say("bob", "/repotune status") == [_denied(chat, "bob", "status")]
    (reply,) = chat.say("alice", "/repotune status")
    assert reply.startswith("@alice **RepoTune status**")
    assert "Serving model version: **none**" in reply
    assert "automatic retraining: **on**" in reply
    assert f"| `{run.id}` | rejected | web |" in reply
    assert "| web | not built |" in reply
    assert "| control | 0 | 1 | 0 |" in reply  # this very job is running on `control`
    assert "[Status page](http://status.test)" in reply


def test_retrain(chat: Chat):
    from bot.runs import list_runs

    assert chat.say("bob", "/repotune retrain") == [_denied(chat, "bob", "retrain")]
    assert list_runs(chat.settings.home) == []
    (reply,) = chat.say("alice", "/repotune retrain --full")
    (run,) = list_runs(chat.settings.home)
    assert reply == (f"@alice :rocket: Queued a full rebuild and training of `web`: run "
                     f"`{run.id}`. [Details](http://status.test/runs/{run.id})")
    assert run.status == RunStatus.QUEUED
    number = PR if chat.forge_name == "github" else MR
    assert run.trigger.kind == "chatops" and run.trigger.requested_by == "alice"
    assert (run.trigger.forge, run.trigger.repo, run.trigger.number, run.trigger.full) \
        == (chat.forge_name, "acme/web", number, True)
    assert Queue("ingest", connection=chat.conn).count == 1
    # A second request while the model is busy joins the running one.
    (reply,) = chat.say("alice", "/repotune retrain")
    assert "already queued or running" in reply
    assert len(list_runs(chat.settings.home)) == 1


def test_eval(chat: Chat):
    report = "| metric | candidate | serving |\n|---|---|---|\n| edit_similarity | 0.61 | 0.58 |"
    assert chat.say("alice", "/repotune eval") == [
        "@alice No run of this repository has an evaluation yet. Try `retrain` first."]
    run = _run(chat.settings, "ingesting", "training", "evaluating", "rejected", report=report,
               checkpoint="/x")
    (latest,) = chat.say("alice", "/repotune eval")
    (named,) = chat.say("alice", f"/repotune eval --run {run.id}")
    assert latest == named
    assert named.startswith(f"@alice **Evaluation of run `{run.id}`** (rejected)")
    assert named.endswith(report)
    assert chat.say("bob", f"/repotune eval --run {run.id}") == [_denied(chat, "bob", "eval")]

    bare = _run(chat.settings, "ingesting", "training", "evaluating", "rejected", checkpoint="/x")
    (reply,) = chat.say("alice", f"/repotune eval --run={bare.id}")
    gpu = Queue("gpu", connection=chat.conn)
    (job,) = [gpu.fetch_job(j) for j in gpu.job_ids]
    assert job.func_name == "bot.jobs.eval_job" and job.args == (bare.id,)
    assert reply == f"@alice :mag: Evaluating run `{bare.id}` (job `{job.id}`); the table follows when it ends."
    (reply,) = chat.say("alice", "/repotune eval --run 20990101-000000-ffff")
    assert "no run `20990101-000000-ffff`" in reply and str(chat.settings.home) not in reply


def test_promote(chat: Chat):
    rejected = _run(chat.settings, "ingesting", "training", "evaluating", "rejected",
                    checkpoint="/x")
    failed = _run(chat.settings, "ingesting", "failed")
    deploy = Queue("deploy", connection=chat.conn)
    assert chat.say("alice", f"/repotune promote {rejected.id}") == [
        _denied(chat, "alice", "promote")]
    assert deploy.count == 0
    (reply,) = chat.say("mia", f"/repotune promote {failed.id}")
    assert f"run `{failed.id}` is failed; only a rejected or an already published run" in reply
    (reply,) = chat.say("mia", f"/repotune promote {rejected.id}")
    (job,) = [deploy.fetch_job(j) for j in deploy.job_ids]
    assert (job.func_name, job.args) == ("bot.jobs.promote_job", (rejected.id,))
    assert reply.startswith(f"@mia :package: Promoting run `{rejected.id}` (job `{job.id}`).")


def test_rollback(chat: Chat):
    deploy = Queue("deploy", connection=chat.conn)
    assert chat.say("bob", "/repotune rollback") == [_denied(chat, "bob", "rollback")]
    assert chat.say("alice", "/repotune rollback 2") == [_denied(chat, "alice", "rollback")]
    (prev,) = chat.say("mia", "/repotune rollback")
    (to_two,) = chat.say("mia", "/repotune rollback v2")
    jobs = [deploy.fetch_job(j) for j in deploy.job_ids]
    assert [(j.func_name, j.args) for j in jobs] == [("bot.jobs.rollback_job", (None,)),
                                                      ("bot.jobs.rollback_job", (2,))]
    assert prev == f"@mia :leftwards_arrow_with_hook: Rolling back to the previous version (job `{jobs[0].id}`)."
    assert to_two == f"@mia :leftwards_arrow_with_hook: Rolling back to version 2 (job `{jobs[1].id}`)."


def test_long_replies_are_cut_politely(chat: Chat):
    report = "\n".join(f"| task {i} | {'x' * 80} |" for i in range(2000))
    run = _run(chat.settings, "ingesting", "training", "evaluating", "rejected", report=report)
    (reply,) = chat.say("alice", f"/repotune eval --run {run.id}")
    assert len(reply) <= 60_000
    assert "more lines were cut to fit in a comment" in reply
    assert "[status page](http://status.test)" in reply


def test_a_failed_acknowledgement_does_not_lose_the_reply(chat: Chat, caplog):
    chat.forge.fail_next(1, 502, r"/reactions$|/award_emoji$")  # the reaction / award-emoji call
    (reply,) = chat.say("alice", "/repotune help status")
    assert reply == "@alice `/repotune status` — Serving version, last runs, corpus size and " \
        f"queues. (needs {'write' if chat.forge_name == 'github' else 'Developer (30)'})"
    assert chat.acks() == []
    assert "could not acknowledge comment" in caplog.text
    assert GITHUB_TOKEN not in caplog.text and GITLAB_TOKEN not in caplog.text


def test_a_stranger_gets_no_reaction_and_no_reply(chat: Chat, caplog):
    """No amplification: someone who may not even run ``help`` (not a collaborator / not a
    member) cannot make the bot write anything to the forge, whatever the comment says."""
    chat.forge.github_users.setdefault("eve", 990)  # a forge account, but no access to acme/web
    for body in ("/repotune help", "/repotune pause", "/repotune retrian", "/repotune promote ../x"):
        assert chat.say("eve", body) == []
    assert chat.acks() == []
    assert all(r == {"handled": True, "command": r["command"], "allowed": False,
                     "answered": False} for r in chat.results)
    assert not any(c.method == "POST" for c in chat.forge.calls)  # only the permission lookups
    assert "may not even run help" in caplog.text
    from bot import scheduler

    assert not scheduler.is_paused(chat.conn)


def test_permission_is_asked_before_the_reaction(chat: Chat):
    (reply,) = chat.say("bob", "/repotune pause")  # a collaborator below the level: refused
    assert ":no_entry:" in reply and chat.acks() == ["eyes"]
    api = chat.forge.calls
    lookup = next(i for i, c in enumerate(api) if "/collaborators/" in c.path or "/members/" in c.path)
    react = next(i for i, c in enumerate(api) if c.path.endswith(("/reactions", "/award_emoji")))
    assert lookup < react


def test_a_replayed_command_runs_once(chat: Chat):
    """The same signed comment delivered again under a new delivery id: one job, one reply."""
    from bot import scheduler

    data, headers = chat.payload("mia", "/repotune pause")
    first = chat.deliver(data, headers)
    assert first.status_code == 202, first.json
    key = "X-GitHub-Delivery" if chat.forge_name == "github" else "Idempotency-Key"
    replay = chat.deliver(data, dict(headers, **{key: "replayed-under-a-new-id"}))
    assert replay.status_code == 200 and replay.json["status"] == "duplicate", replay.json
    chat.work()
    assert len(chat.results) == 1 and chat.results[0]["command"] == "pause"
    (reply,) = chat.replies()  # the bot's comments: exactly one answer
    assert reply.startswith("@mia :pause_button:")
    assert scheduler.is_paused(chat.conn)
