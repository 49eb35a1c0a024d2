"""Accepted completions as evaluation tasks: the real proxy on a real Triton records what it served
(with ``store_code``) and what editors accepted; the reader turns that into tasks, the bot scores
models on them (RQ job on real Redis, the tiny CodeGen) and the status snapshot shows the curve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot import freshness, status
from bot.cli import cli
from bot.proxy_settings import telemetry_folder
from bot.webhook import create_app
from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.editor_tasks import EditorTasks, read_editor_tasks
from tests.fixtures.bot import work

MODEL = "editortasks"
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\n\nprint(add(1, 2))\n"
OTHER = "def scale(values, factor):\n    "


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(python_artifact))
    return repo


def _proxy(triton_server, triton_repo_root: Path, folder: Path, store_code: bool):
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, telemetry_dir=folder, store_code=store_code))
    return app, app.test_client()


def _flush(app) -> None:
    assert app.config["repotune.telemetry"].writer.flush(), "the telemetry writer did not catch up"


def _tabby(client, prefix: str, suffix: str = SUFFIX) -> tuple[str, str]:
    """(completion id, text) of a Tabby completion request."""
    resp = client.post("/v1/completions", json={"language": "python", "segments": {"prefix": prefix, "suffix": suffix}})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    text = body["choices"][0]["text"]
    assert re.search(r"[A-Za-z0-9]", text), f"the tiny model answered {prefix!r} with {text!r}: nothing to accept"
    return body["id"], text


def _event(client, kind: str, cid: str, query: str = "") -> None:
    resp = client.post(f"/v1/events{query}", json={"type": kind, "completion_id": cid, "choice_index": 0})
    assert resp.status_code == 200, resp.get_data(as_text=True)


def _feedback(client, cid: str, **body) -> int:
    return client.post(f"/v1/completions/{cid}/feedback", json=body).status_code


def _editor_use(client) -> dict[str, str]:
    """What a day of editing leaves: a Tabby select, an edited feedback (sent twice), the same
    suggestion taken again, a dismissal and a rejection. Returns the ids by role."""
    selected, text = _tabby(client, PREFIX)
    _event(client, "view", selected)
    _event(client, "select", selected)
    edited, _ = _tabby(client, OTHER)
    assert _feedback(client, edited, accepted=True, text="return [v * factor for v in values]\n") == 200
    assert _feedback(client, edited, accepted=True, text="something else") == 409  # a replay changes nothing
    again, text_again = _tabby(client, PREFIX)
    assert text_again == text  # greedy: the same suggestion, taken a second time
    assert _feedback(client, again, accepted=True) == 200
    dismissed, _ = _tabby(client, "def mul(a, b):\n    ")
    _event(client, "view", dismissed)
    _event(client, "dismiss", dismissed)
    rejected, _ = _tabby(client, "def sub(a, b):\n    ")
    assert _feedback(client, rejected, accepted=False) == 200
    return {"selected": selected, "text": text, "edited": edited, "again": again}


def test_accepted_completions_become_tasks_with_prefix_suffix_and_kept_text(
        deployed, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "telemetry"
    app, client = _proxy(triton_server, triton_repo_root, folder, store_code=True)
    ids = _editor_use(client)
    _flush(app)
    version = deployed.current()

    found = read_editor_tasks(folder, model=MODEL, version=version)
    assert [t.task_id for t in found.tasks] == [f"editor:{ids['selected']}:0", f"editor:{ids['edited']}:0"]
    selected, edited = found.tasks
    # CodeGen cannot fill in the middle: the proxy ignored the suffix, and records none.
    assert (selected.prompt, selected.suffix, selected.target) == (PREFIX, "", ids["text"].rstrip())
    assert not selected.edited and selected.lang == "python" and selected.version == version
    assert (edited.prompt, edited.target, edited.edited) == (OTHER, "return [v * factor for v in values]", True)
    # accepted: the select, the edited feedback and the same suggestion again (a duplicate)
    assert (found.accepted, found.duplicates, found.without_code, found.reason) == (3, 1, 0, None)
    task = selected.as_task(fim=False)
    assert task["kind"] == "line" and task["prompt"] == PREFIX and task["target"] == ids["text"].rstrip()

    assert read_editor_tasks(folder, model="another-model").tasks == []
    assert read_editor_tasks(folder, model=MODEL, version=version + 1).tasks == []
    assert read_editor_tasks(folder, model=MODEL, until=selected.time).tasks == []
    assert [t.task_id for t in read_editor_tasks(folder, model=MODEL, limit=1).tasks] == [edited.task_id]


def test_a_fill_in_the_middle_task_keeps_the_suffix_and_the_kept_text_in_between() -> None:
    """The kinds a FIM model is asked with, from records as the proxy writes them for a FIM
    family (suffix kept); the CodeGen proxy above records none, so these records are written here."""
    from serving.editor_tasks import collect

    served = [{"id": "c1", "time": 1.0, "model": MODEL, "version": 3, "language": "python", "prompt": PREFIX,
               "suffix": SUFFIX, "texts": ["return a + b\n"]},
              {"id": "c2", "time": 2.0, "model": MODEL, "version": 3, "language": "python",
               "prompt": "x = compute(", "suffix": ")\n", "texts": ["1, 2"]}]
    events = [{"type": "select", "completion_id": "c1", "choice_index": 0},
              {"type": "select", "completion_id": "c2", "choice_index": 0, "select_kind": "line"}]
    first, second = collect(served, events).tasks
    assert (first.prompt, first.target, first.suffix) == (PREFIX, "return a + b", "\n" + SUFFIX)
    assert first.prompt + first.target + first.suffix == PREFIX + "return a + b\n" + SUFFIX
    assert first.as_task(fim=True)["kind"] == "fim_line_end" and first.as_task(fim=True)["suffix"] == "\n" + SUFFIX
    assert second.as_task(fim=True)["kind"] == "fim_inline" and second.as_task(fim=False)["suffix"] == ""


def test_store_code_off_gives_no_tasks_and_says_why(deployed, triton_server, triton_repo_root: Path,
                                                    tmp_path: Path, bot_settings) -> None:
    folder = tmp_path / "telemetry"
    app, client = _proxy(triton_server, triton_repo_root, folder, store_code=False)
    cid, _ = _tabby(client, PREFIX)
    _event(client, "select", cid)
    _flush(app)
    found = read_editor_tasks(folder, model=MODEL, version=deployed.current())
    assert found.tasks == [] and found.accepted == 1 and found.without_code == 1
    assert "store_code" in found.reason and PREFIX.strip() not in "".join(f.read_text() for f in folder.iterdir()
                                                                          if f.suffix == ".jsonl")

    settings = bot_settings()
    settings.serving.model_name = MODEL
    tasks, info = freshness.editor_tasks(settings, deployed.current())
    assert tasks == [] and "serving.store_code is off" in info["skipped"]
    assert freshness.queue_editor_eval(settings, None, deployed.current() + 1, deployed.current(), None, None) is None


def test_a_new_version_is_scored_on_editor_tasks_and_the_status_shows_the_curve(
        deployed, triton_server, triton_repo_root: Path, bot_settings, redis_conn, tiny_model: Path) -> None:
    settings = bot_settings()
    settings.serving.model_name, settings.serving.store_code = MODEL, True
    ev = settings.evaluation
    ev.max_new_tokens, ev.block_max_new_tokens, ev.bootstrap, ev.editor_min_tasks = 8, 16, 50, 2
    app, client = _proxy(triton_server, triton_repo_root, telemetry_folder(settings), store_code=True)
    _editor_use(client)
    _flush(app)
    version = deployed.current()

    # Too few tasks for the setting: skipped, and said so.
    ev.editor_min_tasks = 10
    skipped = freshness.editor_eval(settings, version + 1, version, str(tiny_model))
    assert not skipped["ok"] and "editor_min_tasks = 10" in skipped["skipped"] and skipped["n_tasks"] == 2
    ev.editor_min_tasks = 2

    job = freshness.queue_editor_eval(settings, redis_conn, version + 1, version, str(tiny_model), "run-x")
    assert job is not None
    work(redis_conn, ("gpu",))
    entry = freshness.read(freshness.editor_history_path(settings.home, MODEL))[-1]
    assert entry["ok"] and entry["source"] == "editor" and entry["reason"] == "serving", entry
    assert (entry["version"], entry["tasks_version"], entry["n_tasks"], entry["edited"]) == (version + 1, version, 2, 1)
    assert 0.0 <= entry["scores"]["edit_similarity"] <= 1.0 and entry["per_language"]["python"]["n_tasks"] == 2

    # The candidate at evaluate time: the same model on both sides is neither better nor worse.
    compared = freshness.editor_comparison(settings, "run-y", str(tiny_model), str(tiny_model), version)
    assert compared["error"] is None and compared["n_tasks"] == 2 and compared["worse"] is False
    assert compared["deltas"]["edit_similarity"] == 0.0 and compared["gates"] is False
    assert freshness.editor_gate(settings, {**compared, "worse": True}) is None  # informational by default
    settings.evaluation.editor_tasks_gate = True
    assert "editor_tasks_gate is on" in freshness.editor_gate(settings, {**compared, "worse": True})

    snap = status.public(status.collect(settings, None))["editor_freshness"]
    points = snap["models"][MODEL]
    assert snap["store_code"] is True and [p["reason"] for p in points] == ["serving", "serving", "candidate"]
    assert points[1]["ok"] and points[1]["tasks_version"] == version and "edit_similarity" in points[1]["scores"]
    assert points[0]["skipped"] and not points[0]["ok"]

    page = create_app(settings, redis_conn).test_client().get("/").get_data(as_text=True)
    assert page.count('class="editor-point"') == 3 and "skipped: only 2 editor task(s)" in page
    shown = CliRunner().invoke(cli, ["status", "--config", str(settings.source), "--home", str(settings.home)])
    assert shown.exit_code == 0, shown.output
    assert f"editor tasks {MODEL}: 3 scored; last candidate of run run-y on 2 tasks of version {version}" in shown.output


def test_editor_tasks_reason_names_what_is_missing() -> None:
    assert EditorTasks().reason == "no accepted completions were recorded in the window"
    assert "none usable" in EditorTasks(accepted=3, without_code=1, trivial=2).reason
