"""Completion telemetry against a real Triton: what the proxy records, how events are checked,
acceptance per version from a scripted Tabby client, the writer's queue and rotation, and
tabby-agent's completion landing in the telemetry files."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.acceptance import summarize
from serving.http import HttpServer
from serving.telemetry import COMPLETIONS, EVENTS, TelemetryWriter, read_lines, telemetry_files

MODEL = "telemetry"
KEY = "telemetry-key"
PREFIX = "def add(a, b):\n    "
NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(python_artifact))
    return repo


def _app(triton_server, triton_repo_root: Path, folder: Path, **kwargs):
    cfg = ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root, model_name=MODEL,
                      timeout_s=30, telemetry_dir=folder, **kwargs)
    return create_proxy_app(cfg)


def _lines(folder: Path, stream: str) -> list[dict]:
    return list(read_lines(telemetry_files(folder, stream)))


def _flush(app) -> None:
    assert app.config["repotune.telemetry"].writer.flush(), "the telemetry writer did not catch up"


def _tabby(client, prefix: str = PREFIX, suffix: str = "\n", language: str = "python") -> dict:
    resp = client.post("/v1/completions", json={"language": language,
                                                "segments": {"prefix": prefix, "suffix": suffix}},
                       headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_served_completions_are_recorded_without_code_and_counted(deployed, triton_server, triton_repo_root: Path,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "telemetry"
    app = _app(triton_server, triton_repo_root, folder)
    client = app.test_client()
    body = _tabby(client, language="python")
    plain = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 6, "temperature": 0,
                                                 "user": "alice"}).get_json()
    streamed = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 12, "temperature": 0,
                                                    "stream": True})
    assert streamed.status_code == 200
    streamed.get_data()  # drain the stream: it is recorded when it ends
    _flush(app)

    recs = {r["id"]: r for r in _lines(folder, COMPLETIONS)}
    assert body["id"] in recs and plain["id"] in recs and len(recs) == 3
    tabby = recs[body["id"]]
    assert tabby["version"] == deployed.current() and tabby["language"] == "python"
    assert tabby["route"] == "/v1/completions:tabby" and tabby["model"] == MODEL
    assert tabby["completion_chars"] == [len(body["choices"][0]["text"])]
    assert tabby["prompt_tokens"] > 0 and tabby["latency_ms"] > 0
    assert tabby["suffix_tokens"] == 0  # CodeGen is left-to-right: the suffix was not used
    assert len(tabby["client"]) == 16 and KEY not in json.dumps(tabby)
    assert recs[plain["id"]]["language"] == "unknown"
    assert recs[plain["id"]]["client"] not in ("", tabby["client"])  # another credential, another hash
    stream_rec = next(r for r in recs.values() if r["id"] not in (body["id"], plain["id"]))
    assert stream_rec["completion_chars"][0] > 0
    text = "".join(f.read_text() for f in folder.glob("completions-*.jsonl"))
    assert PREFIX.strip() not in text and "prompt" not in json.loads(text.splitlines()[0])
    salt = folder / ".salt"
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600

    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'repotune_proxy_served_completions_total{{language="python",version="{deployed.current()}"}} 1.0' \
        in metrics
    assert "repotune_proxy_completion_chars_bucket" in metrics


def test_store_code_keeps_prompt_and_text(deployed, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "telemetry"
    app = _app(triton_server, triton_repo_root, folder, store_code=True)
    body = _tabby(app.test_client())
    _flush(app)
    rec = _lines(folder, COMPLETIONS)[0]
    assert rec["prompt"] == PREFIX and rec["texts"] == [body["choices"][0]["text"]]


def test_unknown_replayed_and_malformed_events_are_refused_and_change_nothing(
        deployed, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "telemetry"
    app = _app(triton_server, triton_repo_root, folder)
    client = app.test_client()
    body = _tabby(client)
    view = {"type": "view", "completion_id": body["id"], "choice_index": 0}
    assert client.post("/v1/events", json={**view, "extra": {"prompt": "SECRET CODE"}}).status_code == 200
    _flush(app)
    before = _lines(folder, EVENTS)
    assert len(before) == 1 and "SECRET" not in json.dumps(before)  # only the known fields are kept

    replay = client.post("/v1/events", json=view)
    assert replay.status_code == 409 and replay.get_json()["error"]["code"] == "duplicate_event"
    unknown = client.post("/v1/events", json={**view, "completion_id": "cmpl-nobody-served-this"})
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "unknown_completion"
    out_of_range = client.post("/v1/events", json={**view, "choice_index": 3})
    assert out_of_range.status_code == 400 and out_of_range.get_json()["error"]["param"] == "choice_index"
    malformed = client.post("/v1/events", json={"type": "view", "completion_id": body["id"]})
    assert malformed.status_code == 400
    fb = f"/v1/completions/{body['id']}/feedback"
    assert client.post(fb, json={"accepted": "yes"}).status_code == 400
    assert client.post(fb, data="not json", content_type="application/json").status_code == 400
    assert client.post("/v1/completions/cmpl-unknown/feedback", json={"accepted": True}).status_code == 404
    _flush(app)
    assert _lines(folder, EVENTS) == before
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'repotune_proxy_events_rejected_total{reason="replay"} 1.0' in metrics
    assert 'repotune_proxy_events_rejected_total{reason="unknown"} 2.0' in metrics

    # A restarted proxy still knows what it served, and what was already recorded.
    _flush(app)
    again = _app(triton_server, triton_repo_root, folder).test_client()
    assert again.post("/v1/events", json=view).status_code == 409
    assert again.post("/v1/events", json={**view, "type": "select"}).status_code == 200


def test_feedback_measures_what_was_kept_after_edits(deployed, triton_server, triton_repo_root: Path,
                                                     tmp_path: Path) -> None:
    folder = tmp_path / "telemetry"
    app = _app(triton_server, triton_repo_root, folder)
    client = app.test_client()
    body = _tabby(client)
    text = body["choices"][0]["text"]
    assert len(text) >= 4, f"the tiny model gave too short a completion to edit: {text!r}"
    kept = text[: len(text) // 2] + "\u2603" * 5  # a character the model never wrote
    huge = client.post(f"/v1/completions/{body['id']}/feedback", json={"accepted": True, "text": "x" * 100_001})
    assert huge.status_code == 400 and "at most" in huge.get_json()["error"]["message"]
    resp = client.post(f"/v1/completions/{body['id']}/feedback", json={"accepted": True, "text": kept})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["kept_chars"] == len(text) // 2
    assert client.post(f"/v1/completions/{body['id']}/feedback", json={"accepted": False}).status_code == 409
    _flush(app)
    (row,) = [r for r in summarize(folder) if r.language == "python"]
    assert (row.shown, row.accepted, row.kept_reports) == (1, 1, 1)
    assert row.kept_share == pytest.approx((len(text) // 2) / len(text))
    assert kept not in "".join(f.read_text() for f in folder.glob("events-*.jsonl"))


def test_scripted_tabby_client_acceptance_per_version(deployed, triton_server, triton_repo_root: Path,
                                                      python_artifact: Path, tmp_path: Path) -> None:
    """Two versions, each shown 20 completions; the scripted user accepts 5 of version A's
    and 15 of version B's: the summary must give exactly those rates."""
    folder = tmp_path / "telemetry"
    app = _app(triton_server, triton_repo_root, folder)
    client = app.test_client()
    rng = random.Random(7)
    plan = {}
    for accepted in (5, 15):
        version = deployed.current()
        picks = set(rng.sample(range(20), accepted))
        for i in range(20):
            body = _tabby(client, prefix=f"def f{i}(x):\n    ", language="python" if i % 2 else "go")
            cid = body["id"]
            assert client.post("/v1/events", json={"type": "view", "completion_id": cid,
                                                   "choice_index": 0}).status_code == 200
            kind = "select" if i in picks else "dismiss"
            resp = client.post(f"/v1/events{'?select_kind=line' if kind == 'select' else ''}",
                               json={"type": kind, "completion_id": cid, "choice_index": 0})
            assert resp.status_code == 200
        plan[version] = accepted
        if len(plan) == 1:
            deployed.activate(deployed.publish(python_artifact))
    _flush(app)
    rows = {(r.version, r.language): r for r in summarize(folder)}
    for version, accepted in plan.items():
        total = rows[(version, "*")]
        assert (total.served, total.shown, total.accepted) == (20, 20, accepted)
        assert total.rate == pytest.approx(accepted / 20)
        assert total.low < total.rate < total.high
        assert rows[(version, "python")].shown + rows[(version, "go")].shown == 20
    a, b = sorted(plan)
    assert rows[(b, "*")].low > rows[(a, "*")].high  # 25% vs 75% of 20: the intervals do not overlap


def test_writer_drops_and_counts_when_full_and_rotates_by_size_and_age(tmp_path: Path) -> None:
    old_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 40 * 86400))
    (tmp_path / f"events-{old_day}.jsonl").write_text('{"old": true}\n')
    drops = []
    writer = TelemetryWriter(tmp_path, max_file_bytes=200, retention_days=30, queue_size=1,
                             on_drop=lambda: drops.append(1))
    entered, release = threading.Event(), threading.Event()

    def hold() -> dict:
        entered.set()
        release.wait(10)
        return {}

    assert writer.submit(EVENTS, {"n": 0}, later=hold)
    assert entered.wait(10)  # the writer thread is busy with the first record
    assert writer.submit(EVENTS, {"n": 1})  # fills the queue
    started = time.perf_counter()
    assert not writer.submit(EVENTS, {"n": 2})  # dropped, not waited for
    assert time.perf_counter() - started < 0.05
    assert writer.dropped == 1 and drops == [1]
    release.set()
    for n in range(3, 40):
        while not writer.submit(EVENTS, {"n": n, "pad": "x" * 40}):
            writer.flush()
    writer.close()
    files = telemetry_files(tmp_path, EVENTS)
    assert not (tmp_path / f"events-{old_day}.jsonl").exists()
    assert len(files) > 1 and all(f.stat().st_size < 200 + 100 for f in files)
    assert sorted(r["n"] for r in read_lines(files)) == [0, 1, *range(3, 40)]


def test_tabby_agent_completion_is_recorded(deployed, triton_server, triton_repo_root: Path, tmp_path: Path,
                                            node_client) -> None:
    node_client("tabby-agent")
    folder = tmp_path / "telemetry"
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, api_keys=(KEY,), telemetry_dir=folder))
    server = HttpServer(app, "127.0.0.1", 0, name="telemetry-editors").start()
    try:
        home = tmp_path / "home"
        (home / ".tabby-client" / "agent").mkdir(parents=True)
        (home / ".tabby-client" / "agent" / "config.toml").write_text(
            f'[server]\nendpoint = "{server.url}"\ntoken = "{KEY}"\n')
        doc = tmp_path / "main.py"
        doc.write_text("def add(a, b):\n    \n")
        done = subprocess.run(["node", str(NODE_DIR / "tabby_lsp.mjs"), doc.as_uri(), "python", str(doc), "1", "4",
                               "60000"], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
                              timeout=120, cwd=NODE_DIR)
        assert done.returncode == 0, done.stderr[-2000:]
        cid = json.loads(done.stdout.strip().splitlines()[-1])["items"][0]["data"]["completionId"]
        # What an editor does next: tell the server the completion was shown and taken.
        auth = {"Authorization": f"Bearer {KEY}"}
        for kind in ("view", "select"):
            resp = requests.post(f"{server.url}/v1/events", json={"type": kind, "completion_id": cid,
                                                                  "choice_index": 0}, headers=auth, timeout=30)
            assert resp.status_code == 200, resp.text
        _flush(app)
    finally:
        server.stop()
    recs = [r for r in _lines(folder, COMPLETIONS) if r["id"] == cid]
    assert len(recs) == 1 and recs[0]["language"] == "python" and recs[0]["route"] == "/v1/completions:tabby"
    events = _lines(folder, EVENTS)
    # Whatever the agent posted itself is stored too, and checked like ours.
    assert {("view", cid), ("select", cid)} <= {(e["type"], e.get("completion_id")) for e in events}
    assert all(e.get("version") == deployed.current() for e in events if e.get("completion_id"))


def test_without_telemetry_events_are_only_validated_and_feedback_says_it_is_off(
        deployed, triton_server, triton_repo_root: Path) -> None:
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30))
    client = app.test_client()
    assert app.config["repotune.telemetry"] is None
    event = {"type": "view", "completion_id": "cmpl-anything", "choice_index": 0}
    assert client.post("/v1/events", json=event).status_code == 200  # no record to check it against
    off = client.post("/v1/completions/cmpl-anything/feedback", json={"accepted": True})
    assert off.status_code == 404 and off.get_json()["error"]["code"] == "telemetry_off"
