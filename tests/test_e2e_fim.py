"""The demo loop on a FIM family (StarCoder2), end to end and slim (issue 14's proof).

Same stack and code path as ``tests/test_e2e.py`` (`repotune up` with its demo bootstrap: real
Redis, the bundled Triton on the python backend, RQ workers in their own processes, DeepSpeed on
CPU, signed GitHub webhooks), but the configuration names a FIM family, as a user would with
``[training] family = "starcoder2"`` in repotune.toml:

1. the bootstrap writes the family into the demo's configuration and initialises a tiny
   StarCoder2 (detectable, sentinels as single tokens), which serves as version 1;
2. ``demo_run.run_demo`` pushes code → ingest → training on FIM examples → the gate on FIM tasks
   against the untrained base → publish → and closes with an editor request carrying a
   ``suffix``;
3. through the proxy, that request is answered with the family's PSM prompt: the same text and
   prompt length as the hand-built ``<fim_prefix>…<fim_suffix>…<fim_middle>`` prompt.

One push and fewer steps and tasks than test_e2e.py: the gate still decides on loss (a random
base against a trained candidate) with edit-similarity and identifier tolerances on FIM tasks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from bot import config, demo, demo_run, up
from families import build_fim_prompt, detect_checkpoint_family
from tests.fixtures.stack import running_up
from trainer.evaluate.tasks import FIM_TASK_KINDS

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

FAMILY = "starcoder2"


@pytest.fixture(scope="module")
def fim_stack(tmp_path_factory: pytest.TempPathFactory):
    """`repotune up` on embedded defaults with ``training.family`` set, in a fresh home."""
    with running_up(tmp_path_factory.mktemp("home"), env={"REPOTUNE_TRAINING_FAMILY": FAMILY},
                    max_steps=12, num_tasks=32) as tree:
        assert tree.settings.training.family == FAMILY
        yield tree


def test_demo_on_a_fim_family_trains_gates_and_fills_in_the_middle(fim_stack: up.Up,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tree = fim_stack
    home = tree.settings.home
    started = time.monotonic()
    paths = demo.DemoPaths(home)
    assert f'family = "{FAMILY}"' in paths.config.read_text()
    assert config.load(paths.config).training.family == FAMILY  # what `repotune demo` and the workers read
    assert detect_checkpoint_family(home / "models" / "base").name == FAMILY

    lines: list[str] = []
    run = demo_run.run_demo(home, tree.urls["webhook_github"], tree.urls["completions"], files=30, seed=404,
                        echo=lines.append, timeout=400, family=FAMILY)
    assert run.status.value == "serving", (run.status, run.error, lines)
    assert run.metrics["gate"]["passed"] is True and run.version == 2
    assert [h[0] for h in run.history] == ["queued", "ingesting", "training", "evaluating",
                                           "converting", "publishing", "serving"]

    train_json = json.loads((Path(run.checkpoint) / "train.json").read_text())
    assert train_json["extras"]["family"] == FAMILY and train_json["steps"] == 12
    fim = train_json["extras"]["data"]["fim"]
    assert (fim["family"], fim["fim_rate"], fim["spm_rate"]) == (FAMILY, 0.5, 0.5)
    assert fim["documents"]["psm"] > 0 and fim["documents"]["spm"] > 0 and fim["documents"]["plain"] > 0
    eval_json = json.loads((Path(run.eval_report).parent / "eval.json").read_text())
    assert eval_json["config"]["family"] == FAMILY
    assert set(eval_json["tasks_by_kind"]) == set(FIM_TASK_KINDS), eval_json["tasks_by_kind"]

    closing = lines[-1]
    assert closing.startswith(f"fill-in-the-middle from codegen@2 ({FAMILY}): "), lines[-3:]
    assert closing.endswith(demo_run.DEMO_SUFFIX)

    url = tree.urls["completions"]
    body = {"max_tokens": 12, "temperature": 0}
    fim_answer = requests.post(url, json={**body, "prompt": demo_run.DEMO_PREFIX, "suffix": demo_run.DEMO_SUFFIX},
                               timeout=60)
    by_hand = requests.post(url, json={**body, "prompt": build_fim_prompt(FAMILY, demo_run.DEMO_PREFIX,
                                                                          demo_run.DEMO_SUFFIX)}, timeout=60)
    assert fim_answer.status_code == 200 and by_hand.status_code == 200, (fim_answer.text, by_hand.text)
    assert "X-RepoTune-Suffix" not in fim_answer.headers  # the suffix was used, not ignored
    assert fim_answer.json()["model"].endswith("@2")
    assert fim_answer.json()["choices"][0]["text"] == by_hand.json()["choices"][0]["text"]
    assert fim_answer.json()["usage"]["prompt_tokens"] == by_hand.json()["usage"]["prompt_tokens"]

    with capsys.disabled():
        print(f"\nFIM demo ({FAMILY}): push to serving and FIM answer in {time.monotonic() - started:.1f}s")
        print("\n".join(lines))


def test_a_demo_home_keeps_the_family_it_was_set_up_for(tmp_path: Path) -> None:
    from bot.errors import BotError
    from trainer.tiny import init_tiny

    home = tmp_path / "home"
    first = config.load(None, env={"REPOTUNE_HOME": str(home)})
    paths = demo.setup_demo(first)
    assert demo.FAMILY_HINT in paths.config.read_text() and first.training.family is None
    again = config.load(None, env={"REPOTUNE_HOME": str(home), "REPOTUNE_TRAINING_FAMILY": FAMILY})
    with pytest.raises(BotError, match="fresh --home"):
        demo.setup_demo(again)
    # A base bootstrapped as CodeGen is refused for a FIM family too (e.g. the demo file was edited).
    init_tiny(["def f(x):\n    return x\n"] * 20, home / "models" / "base")
    again.training.family = FAMILY
    with pytest.raises(BotError, match="tiny codegen, but training.family = 'starcoder2'"):
        demo.ensure_base_model(again)
    assert demo.ensure_base_model(first) == home / "models" / "base"
