"""bot.forge against the local forge server: the real pygithub / python-gitlab over HTTP."""

from __future__ import annotations

import logging

import pytest

from bot.errors import ConfigError, ForgeError
from bot.forge import GitHubForge, GitLabForge, Target
from tests.fixtures.forge import BOT_LOGIN, GITHUB_TOKEN, GITLAB_TOKEN, LocalForge

SHA = "a" * 40


@pytest.fixture
def gh(local_forge: LocalForge) -> GitHubForge:
    local_forge.add_github_repo("acme/web", {"alice": "write", "mia": "maintain", "ada": "admin",
                                             "tom": "triage", "bob": "read"}, pulls=(7,))
    return GitHubForge(local_forge.github_api_url, GITHUB_TOKEN, retries=0)


@pytest.fixture
def gl(local_forge: LocalForge) -> GitLabForge:
    local_forge.add_gitlab_project("acme/web", 42, {"dev": 30, "maint": 40, "rep": 20},
                                   merge_requests=(3,))
    return GitLabForge(local_forge.gitlab_url, GITLAB_TOKEN)


def test_github_comment_reaction_status_permission(gh: GitHubForge, local_forge: LocalForge):
    cid = local_forge.add_github_comment("acme/web", 7, "alice", "/repotune status")
    gh.react({"repo": "acme/web", "number": 7, "comment_id": cid}, "eyes")
    new_id = gh.comment(("acme/web", 7), "hello **there**")
    gh.set_status("acme/web", SHA, "repotune/train", "pending", "training", "http://s/runs/1")

    repo = local_forge.github_repos["acme/web"]
    assert [r["content"] for r in repo.reactions] == ["eyes"]
    assert repo.reactions[0]["comment_id"] == cid
    assert repo.comments[new_id]["body"] == "hello **there**"
    assert local_forge.github_comments("acme/web", 7) == ["hello **there**"]
    assert [(s["context"], s["state"], s["description"], s["target_url"])
            for s in repo.statuses] == [("repotune/train", "pending", "training", "http://s/runs/1")]
    # Lazy objects: one action is one request, and every request carried the token.
    posts = local_forge.calls_to("github", "POST")
    assert [c.path for c in posts] == [
        f"/api/v3/repos/acme/web/issues/comments/{cid}/reactions",
        "/api/v3/repos/acme/web/issues/7/comments",
        f"/api/v3/repos/acme/web/statuses/{SHA}",
    ]
    assert all(c.authorization == f"token {GITHUB_TOKEN}" for c in local_forge.calls)

    # role_name keeps maintain and triage apart (permission would fold them into write/read).
    assert [gh.permission("acme/web", u) for u in ("ada", "mia", "alice", "tom", "bob")] == [
        "admin", "maintain", "write", "triage", "read"]
    assert gh.permission("acme/web", BOT_LOGIN) == "none"  # a user, but no collaborator
    assert gh.permission("acme/web", "ghost") == "none"  # GitHub answers 404 for no such user


def test_github_errors_become_forge_errors_without_token(local_forge: LocalForge, caplog):
    local_forge.add_github_repo("acme/web", pulls=(7,))
    bad = GitHubForge(local_forge.github_api_url, "ghp_wrongtoken", retries=0)
    with pytest.raises(ForgeError) as info:
        bad.comment(("acme/web", 7), "x")
    assert "401" in str(info.value) and "ghp_wrongtoken" not in str(info.value)

    good = GitHubForge(local_forge.github_api_url, GITHUB_TOKEN, retries=0)
    with pytest.raises(ForgeError, match="404"):
        good.comment(("acme/nope", 1), "x")
    local_forge.fail_next(1, 500)
    with pytest.raises(ForgeError, match="500"):
        good.set_status("acme/web", SHA, "repotune/eval", "success", "ok")
    with pytest.raises(ValueError):
        good.set_status("acme/web", SHA, "repotune/eval", "failed", "GitLab word, not ours")

    down = GitHubForge("http://127.0.0.1:9/api/v3", GITHUB_TOKEN, retries=0)
    with pytest.raises(ForgeError, match="api_url"):
        down.comment(("acme/web", 7), "x")


def test_github_app_installation_auth(local_forge: LocalForge):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    local_forge.app_installations[77] = public.decode()
    local_forge.add_github_repo("acme/web", pulls=(7,))

    app = GitHubForge(local_forge.github_api_url, app_id=12345, private_key=pem,
                      installation_id=77, retries=0)
    app.comment(Target("acme/web", 7), "from the app")
    token_calls = local_forge.calls_to("github", "POST", r"/app/installations/77/access_tokens")
    assert len(token_calls) == 1
    issued = next(iter(local_forge.installation_tokens))
    comment_call = local_forge.calls_to("github", "POST", r"/issues/7/comments")[0]
    assert comment_call.authorization == f"token {issued}"
    assert local_forge.github_comments("acme/web", 7) == ["from the app"]


def test_github_missing_credentials_is_a_config_error():
    with pytest.raises(ConfigError, match="REPOTUNE_GITHUB_TOKEN"):
        GitHubForge("http://127.0.0.1:9/api/v3")


def test_gitlab_note_award_status_members(gl: GitLabForge, local_forge: LocalForge):
    nid = local_forge.add_gitlab_note(42, 3, "dev", "/repotune help")
    # By path: the project id is looked up once and cached.
    gl.react({"repo": "acme/web", "number": 3, "comment_id": nid}, "+1")
    gl.react({"repo": "acme/web", "number": 3, "comment_id": nid, "project_id": 42}, "eyes")
    new_id = gl.comment(Target("acme/web", 3), "reply | table")
    proj = local_forge.gitlab_projects[42]
    assert [a["name"] for a in proj.awards] == ["thumbsup", "eyes"]
    assert proj.notes[new_id]["body"] == "reply | table"
    assert len(local_forge.calls_to("gitlab", "GET", r"^/api/v4/projects/acme%2Fweb$")) == 1

    gl.set_status("acme/web", SHA, "repotune/train", "pending", "queued", None)
    gl.set_status("acme/web", SHA, "repotune/train", "pending", "training")  # no change: no-op
    gl.set_status("acme/web", SHA, "repotune/train", "failure", "failed: oom", "http://s/r/1")
    assert [(s["name"], s["status"], s["description"]) for s in proj.statuses] == [
        ("repotune/train", "pending", "queued"), ("repotune/train", "failed", "failed: oom")]
    assert proj.statuses[1]["target_url"] == "http://s/r/1"

    dev_id = local_forge.gitlab_user_id(42, "dev")
    assert gl.permission("acme/web", dev_id) == 30
    assert gl.permission("acme/web", "maint") == 40
    assert gl.permission("acme/web", "rep") == 20
    assert gl.permission("acme/web", "de") == 0  # a query match is not the same username
    assert gl.permission("acme/web", 999999) == 0
    assert all(c.authorization == GITLAB_TOKEN for c in local_forge.calls)


def test_gitlab_errors(local_forge: LocalForge, caplog):
    local_forge.add_gitlab_project("acme/web", 42, merge_requests=(3,))
    caplog.set_level(logging.DEBUG)
    bad = GitLabForge(local_forge.gitlab_url, "glpat-wrong")
    with pytest.raises(ForgeError, match="401") as info:
        bad.comment(Target("acme/web", 3, 42), "x")
    assert "glpat-wrong" not in str(info.value)
    good = GitLabForge(local_forge.gitlab_url, GITLAB_TOKEN)
    with pytest.raises(ForgeError, match="404"):
        good.comment(Target("acme/other", 3), "x")
    local_forge.fail_next(1, 502)
    with pytest.raises(ForgeError, match="502"):
        good.set_status("acme/web", SHA, "repotune/eval", "success", "ok")
    assert GITLAB_TOKEN not in caplog.text
    with pytest.raises(ConfigError):
        GitLabForge(local_forge.gitlab_url, None)
