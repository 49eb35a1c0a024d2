"""A whole run through the real packages on CPU: ingest → train (tiny CodeGen) → evaluate → convert
(python backend) → publish into a real Triton; a rejected candidate is promoted by hand."""

from __future__ import annotations

from bot import lifecycle, scheduler, serving_version
from bot.runs import RunStatus, load_run
from serving import TritonServer
from tests.fixtures.bot import work


def test_a_run_flows_through_every_step_to_serving(make_repo, bot_settings, redis_conn, tiny_model):
    repo = make_repo(files=40, seed=9)
    settings = bot_settings(github_url=repo.url)
    settings.training.base_model = str(tiny_model)
    settings.training.deepspeed = "none"
    settings.training.max_steps = 2
    settings.training.block_size = 128
    settings.evaluation.num_tasks = 6
    settings.evaluation.bootstrap = 50
    settings.evaluation.max_new_tokens = 8
    with TritonServer(settings.home / "triton") as triton:
        settings.serving.triton_url = triton.url
        run_id = scheduler.request_training(settings, redis_conn, "hello", requested_by="alice")
        work(redis_conn)
        run = load_run(settings.home, run_id)
        seen = [h[0] for h in run.history]
        assert seen[:4] == ["queued", "ingesting", "training", "evaluating"], run.error
        assert run.metrics["steps"] == 2 and run.corpus_version["hello"]["commit"] == repo.head()
        assert run.metrics["gate"]["passed"] in (True, False) and run.eval_report
        if run.status == RunStatus.REJECTED:  # a 2-step model may lose: promote it by hand
            assert scheduler.lock_holder(redis_conn, "codegen") is None
            lifecycle.enqueue_promote(settings, redis_conn, run_id)
            work(redis_conn)
            run = load_run(settings.home, run_id)
        assert run.status == RunStatus.SERVING, run.error
        assert [h[0] for h in run.history][-3:] == ["converting", "publishing", "serving"]
        assert run.version == 1 and serving_version.serving_checkpoint(settings) == (1, run.checkpoint)
        assert scheduler.lock_holder(redis_conn, "codegen") is None
