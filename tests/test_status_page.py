"""The status page in a real headless Chromium, against the real webhook app on a free port,
a real Redis, and a REPOTUNE_HOME holding real state: a corpus built from a local git
repository, runs recorded through bot.runs, evaluations written by trainer.evaluate.compare,
and model versions published (and one activated) in a real embedded Triton."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from bot import config, runs, scheduler
from bot import queue as q
from tests.fixtures.bot import SECRET_ENV
from tests.fixtures.triton import serve_app

MODEL = "codegen"


def _settings(tmp_path: Path, redis_url: str, repo_url: str) -> config.Settings:
    toml = tmp_path / "repotune.toml"
    toml.write_text(
        f'home = "{tmp_path / "home"}"\nredis_url = "{redis_url}"\n'
        '[serving]\nbackend = "python"\n'
        f'[[repos]]\nname = "acme/web"\nurl = "{repo_url}"\nforge = "github"\nfull_name = "acme/web"\n'
        "num_shards = 2\nheldout_fraction = 0.2\n"
        '[[repos]]\nname = "tools"\nurl = "https://gitlab.example.internal/platform/tools.git"\n'
        'forge = "gitlab"\nfull_name = "platform/tools"\n', encoding="utf-8")
    return config.load(toml, env=SECRET_ENV)


def _record_run(home: Path, statuses: list[str], *, commit: str, age_s: float, note: str = "",
                **fields: Any) -> runs.RunRecord:
    """A run created ``age_s`` ago (ids sort by creation second) moved through ``statuses``."""
    run = runs.new_run(repo="acme/web", trigger={"kind": "push", "forge": "github", "repo": "acme/web",
                                                 "commit": commit}, model=MODEL, now=time.time() - age_s)
    for status in statuses:
        runs.transition(run, status, note if status == statuses[-1] else "")
    for key, value in fields.items():
        setattr(run, key, value)
    runs.save_run(home, run)
    return run


@pytest.fixture
def live_home(tmp_path: Path, redis_url: str, make_repo, tiny_model: Path, make_artifact) -> dict[str, Any]:
    """A REPOTUNE_HOME with a real corpus, four runs, two published versions (one serving)."""
    from serving import ModelRepository, TritonServer
    from trainer import corpus
    from trainer.evaluate import EvalConfig, compare

    work = make_repo(files=24, seed=5, name="web")
    settings = _settings(tmp_path, redis_url, work.url)
    home = settings.home
    result = corpus.update(settings.repo("acme/web").corpus_spec(), home)
    heldout = list(corpus.read_records(corpus.shard_files(home, "acme/web", "heldout")))
    assert heldout, "the sample repository should have held-out files"

    # Runs: one served, one rejected by the gate, one failed, one still training.
    cfg = EvalConfig(num_tasks=6, max_new_tokens=4, batch_size=8, bootstrap=50, device="cpu")
    served = _record_run(home, ["ingesting", "training", "evaluating", "converting", "publishing", "serving"],
                         commit=result.commit, age_s=4000, version=1, metrics={"train_loss": 5.41, "steps": 40})
    compare(tiny_model, tiny_model, heldout, cfg, corpus_version=result.version,
            out_dir=runs.run_dir(home, served.id))
    served.eval_report = str(runs.run_dir(home, served.id) / "report.md")
    runs.save_run(home, served)
    rejected = _record_run(home, ["ingesting", "training", "evaluating", "rejected"], commit=result.commit, age_s=3000,
                           error="gate: edit similarity did not improve by the margin (0.005)",
                           metrics={"train_loss": 9.87})
    shutil.copy(runs.run_dir(home, served.id) / "eval.json", runs.run_dir(home, rejected.id) / "eval.json")
    failed = _record_run(home, ["ingesting", "training", "failed"], commit=result.commit, age_s=2000,
                         error="training: worker heartbeat stopped (abandoned)")
    training = _record_run(home, ["ingesting", "training"], commit=result.commit, age_s=60,
                           progress={"stage": "train", "done": 12, "total": 40, "loss": 6.1})

    # Model versions: two published, the first activated in a real Triton.
    repo = ModelRepository(home / "triton", MODEL, None)
    with TritonServer(home / "triton", log_path=tmp_path / "triton.log") as triton:
        repo = ModelRepository(home / "triton", MODEL, triton.url)
        first = repo.publish(make_artifact("good"))
        repo.activate(first)
    second = repo.publish(make_artifact("good"))
    assert repo.current() == first != second

    # Queue state: a job waiting on `ingest`, training paused.
    connection = redis.Redis.from_url(redis_url)
    q.get_queue("ingest", connection).enqueue("os.getcwd")
    scheduler.pause(connection)
    return {"settings": settings, "redis": connection, "corpus": result, "served": served,
            "rejected": rejected, "failed": failed, "training": training, "versions": (first, second)}


def test_status_page_in_chromium(live_home: dict[str, Any], page, artifacts_dir: Path) -> None:
    from bot.webhook import create_app

    app = create_app(live_home["settings"], live_home["redis"])
    served, rejected, failed, training = (live_home[k] for k in ("served", "rejected", "failed", "training"))
    first, second = live_home["versions"]
    with serve_app(app) as base:
        page.goto(base + "/")
        header = page.locator("#serving-version")
        assert "version 1" in header.inner_text()
        assert page.locator("#paused").is_visible()

        repos = page.locator("#repositories")
        assert "acme/web" in repos.inner_text() and "tools" in repos.inner_text()
        web_row = repos.locator("tr", has_text="acme/web")
        corpus = live_home["corpus"]
        assert corpus.commit[:10] in web_row.inner_text()
        assert str(corpus.train_files) in web_row.locator("td").nth(5).inner_text()
        assert "no corpus yet" in repos.locator("tr", has_text="tools").inner_text()

        models = page.locator("#models")
        rows = models.locator("tbody tr")  # newest first
        assert rows.count() == 2
        assert rows.nth(0).locator("td").first.inner_text().strip() == str(second)
        assert rows.nth(0).locator(".badge").inner_text() == "standby"
        assert rows.nth(1).locator("td").first.inner_text().strip() == str(first)
        assert rows.nth(1).locator(".badge").inner_text() == "serving"

        table = page.locator("#runs")
        expect = {served.id: "serving", rejected.id: "rejected", failed.id: "failed", training.id: "training"}
        for run_id, status in expect.items():
            row = table.locator(f'tr[data-run="{run_id}"]')
            assert row.locator(".badge").inner_text() == status, run_id
        assert "did not improve" in table.locator(f'tr[data-run="{rejected.id}"]').inner_text()
        assert "abandoned" in table.locator(f'tr[data-run="{failed.id}"]').inner_text()
        assert "12/40" in table.locator(f'tr[data-run="{training.id}"]').inner_text()
        # Newest first, as recorded.
        order = table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.run)")
        assert order == [training.id, failed.id, rejected.id, served.id]

        chart = page.locator("#history img")
        chart.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
        assert chart.evaluate("img => img.naturalWidth") > 300

        queues = page.locator("#queues")
        assert queues.locator("tr", has_text="ingest").locator("td").nth(1).inner_text() == "1"
        page.screenshot(path=str(artifacts_dir / "status-page.png"), full_page=True)
        assert not page.console_errors, page.console_errors

        # The report link renders report.md as HTML (the verdict table is a real table).
        table.locator(f'tr[data-run="{served.id}"] a', has_text="report").click()
        page.wait_for_url(f"**/runs/{served.id}/report")
        report_md = Path(served.eval_report).read_text(encoding="utf-8")
        first_heading = next(line.lstrip("# ").strip() for line in report_md.splitlines() if line.startswith("#"))
        assert first_heading in page.locator(".report h1, .report h2, .report h3").first.inner_text()
        assert page.locator(".report table").count() >= 1

        # The run page: HTML for people (where commit-status links land), JSON for programs.
        page.goto(f"{base}/runs/{failed.id}")
        assert "abandoned" in page.locator(".notice").inner_text()
        request = urllib.request.Request(f"{base}/runs/{failed.id}", headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            record = json.loads(response.read())
        assert record["id"] == failed.id and record["status"] == "failed"
        assert [h[0] for h in record["history"]] == ["queued", "ingesting", "training", "failed"]


def test_empty_home_says_what_is_missing(tmp_path: Path, redis_url: str) -> None:
    """No corpus, no runs, no models: the page explains each, and the chart is a sentence, not a
    picture (a missing chart must never look like a flat one)."""
    from bot.webhook import create_app

    settings = _settings(tmp_path, redis_url, "https://github.com/acme/web.git")
    app = create_app(settings, redis.Redis.from_url(redis_url))
    client = app.test_client()
    html = client.get("/status").get_data(as_text=True)
    assert "No runs yet" in html
    assert "No model version has been published yet" in html
    assert 'id="chart-placeholder"' in html and "No run has been evaluated yet" in html
    assert "<img" not in html
    chart = client.get("/charts/history.png")
    assert chart.status_code == 404 and chart.mimetype == "text/plain"
    assert client.get("/runs/20260101-000000-abcd", headers={"Accept": "application/json"}).status_code == 404
    assert client.get("/runs/..%2Fetc/report").status_code == 404


def test_report_markup_is_escaped(tmp_path: Path, redis_url: str) -> None:
    """A report is rendered as HTML, but text from it can never become markup."""
    from bot.webhook import create_app

    settings = _settings(tmp_path, redis_url, "https://github.com/acme/web.git")
    run = runs.new_run(repo="acme/web", trigger={"kind": "chatops", "requested_by": "<b>mallory</b>"})
    runs.save_run(settings.home, run)
    (runs.run_dir(settings.home, run.id) / "report.md").write_text(
        "## Verdict <script>alert(1)</script>\n\n| metric | value |\n|---|---:|\n| `x<y` | **0.5** |\n\n"
        "- see [docs](https://example.com/a) and [bad](javascript:alert(1))\n", encoding="utf-8")
    client = create_app(settings, redis.Redis.from_url(redis_url)).test_client()
    html = client.get(f"/runs/{run.id}/report").get_data(as_text=True)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<code>x&lt;y</code>" in html and "<strong>0.5</strong>" in html
    assert '<a href="https://example.com/a"' in html and 'href="javascript:' not in html
    page = client.get(f"/runs/{run.id}", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
