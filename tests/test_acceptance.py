"""Acceptance per version from telemetry files, and where it is shown: ``repotune status``, the
``/api/status`` snapshot, the status page and the chat-ops ``status`` reply.

The telemetry is written by the real :class:`serving.telemetry.Telemetry` (what the proxy runs),
fed a scripted client: version 2 shown 40 completions, 30 accepted; version 1 shown 20, 4
accepted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bot import config
from bot.chatops.render import render_status
from bot.cli import cli
from bot.status import public, snapshot, telemetry_dir
from serving.acceptance import summarize, summarize_records, wilson
from serving.telemetry import Telemetry, load_salt
from tests.fixtures.bot import SECRET_ENV

PLAN = {1: (20, 4), 2: (40, 30)}
"""version → (shown, accepted)."""


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson(5, 20)
    assert low == pytest.approx(0.1119, abs=1e-4) and high == pytest.approx(0.4687, abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    narrow, wide = wilson(50, 100, 0.9), wilson(50, 100, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_accepted_wins_over_a_later_dismiss_and_kept_share_only_where_reported() -> None:
    completions = [{"id": f"c{i}", "version": 1, "model": "m", "language": "go", "choices": 1} for i in range(3)]
    ev = {"version": 1, "model": "m", "language": "go", "choice_index": 0, "completion_chars": 10}
    events = [{**ev, "type": "view", "completion_id": "c0"}, {**ev, "type": "select", "completion_id": "c0"},
              {**ev, "type": "dismiss", "completion_id": "c0"},
              {**ev, "type": "view", "completion_id": "c1"}, {**ev, "type": "dismiss", "completion_id": "c1"},
              {**ev, "type": "feedback", "completion_id": "c2", "accepted": True, "kept_chars": 6}]
    rows = {r.language: r for r in summarize_records(completions, events)}
    assert set(rows) == {"go", "*"}
    go = rows["go"]
    assert (go.served, go.shown, go.accepted) == (3, 3, 2)
    assert go.kept_share == pytest.approx(0.6) and go.kept_reports == 1


def _settings(tmp_path: Path, redis_url: str | None = None) -> config.Settings:
    toml = tmp_path / "repotune.toml"
    toml.write_text(f'home = "{tmp_path / "home"}"\n' + (f'redis_url = "{redis_url}"\n' if redis_url else ""),
                    encoding="utf-8")
    return config.load(toml, env=SECRET_ENV)


def _scripted_client(folder: Path) -> None:
    """Serve and show completions with the planned acceptance, as the proxy would record them."""
    tel = Telemetry(folder, load_salt(folder / ".salt"))
    n = 0
    for version, (shown, accepted) in PLAN.items():
        for i in range(shown):
            n += 1
            cid = f"cmpl-{n}"
            tel.completion(cid=cid, model="codegen", version=version, language="python" if i % 2 else "rust",
                           route="/v1/completions:tabby", client=tel.client("key"), prompt_tokens=20,
                           texts=["return a + b"], latency_s=0.01)
            tel.event({"type": "view", "completion_id": cid, "choice_index": 0})
            tel.event({"type": "select" if i < accepted else "dismiss", "completion_id": cid, "choice_index": 0})
    assert tel.writer.flush()
    tel.close()


def test_status_snapshot_cli_page_and_chatops_show_acceptance(tmp_path: Path, redis_url: str) -> None:
    settings = _settings(tmp_path, redis_url)
    folder = telemetry_dir(settings)
    assert folder == settings.home / "telemetry"
    _scripted_client(folder)

    rows = {(r.version, r.language): r for r in summarize(folder)}
    for version, (shown, accepted) in PLAN.items():
        assert (rows[(version, "*")].shown, rows[(version, "*")].accepted) == (shown, accepted)

    data = snapshot(settings, redis.Redis.from_url(redis_url)).to_dict()
    acc = data["acceptance"]
    assert acc["days"] == 7 and [r["version"] for r in acc["rows"] if r["language"] == "*"] == [2, 1]
    top = acc["rows"][0]
    assert (top["version"], top["language"], top["shown"], top["accepted"]) == (2, "*", 40, 30)
    assert top["rate"] == pytest.approx(0.75) and top["low"] < 0.75 < top["high"]
    assert public(data)["acceptance"] == acc and "client" not in json.dumps(acc)

    result = CliRunner(env={"REDIS_URL": redis_url, "REPOTUNE_CONFIG": None}).invoke(
        cli, ["status", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert "acceptance version 2 all languages: 30/40 shown accepted, 75.0% (" in result.output
    assert "acceptance version 1 all languages: 4/20 shown accepted, 20.0% (" in result.output

    reply = render_status(data)
    assert "**Completion acceptance** (last 7 days)" in reply
    assert "| 2 | 40 | 40 | 30 | 75.0% (" in reply and "| 1 | 20 | 20 | 4 | 20.0% (" in reply

    from bot.webhook import create_app

    html = create_app(settings, redis.Redis.from_url(redis_url)).test_client().get("/status").get_data(as_text=True)
    section = html.split('<section id="acceptance">', 1)[1].split("</section>", 1)[0]
    assert 'id="acceptance-2"' in section and 'id="acceptance-1"' in section
    assert section.index('id="acceptance-2"') < section.index('id="acceptance-1"')
    assert "75.0% (" in section and "rust" in section and "python" in section


def test_status_summary_survives_a_torn_last_line(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    folder = telemetry_dir(settings)
    assert snapshot(settings, None).acceptance == {"days": 7, "rows": []}
    _scripted_client(folder)
    first = snapshot(settings, None).acceptance["rows"]
    assert first[0]["shown"] == 40
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with open(folder / f"events-{day}.jsonl", "a", encoding="utf-8") as f:
        f.write('{"torn line without an end')  # a crash mid-write
    again = snapshot(settings, None).acceptance["rows"]
    assert again == first
    reply = render_status(snapshot(settings, None).to_dict())
    assert "Completion acceptance" in reply
