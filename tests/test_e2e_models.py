"""Two models, two repositories, one RepoTune (issue 15's "Done when").

`repotune up` on a repotune.toml of two local bare repositories and two models, with real Redis,
the bundled Triton (python backend), RQ workers in their own processes, signed GitHub webhooks
over HTTP and the `openai` SDK through the one proxy, whose keys are scoped per model:

    team-a   method lora   learns from repo-a   key keyA
    team-b   method full   learns from repo-b   key keyB

1. before any push, both models answer: team-b its base published as version 1, team-a its bare
   base (loaded once, no adapter yet); each key reaches only its own model;
2. push to repo-a → only team-a trains (a LoRA adapter) → the gate (base + adapter against the
   bare base) → the adapter is published (no conversion) and serves;
3. push to repo-b → only team-b trains (DeepSpeed, full) → converted, published, serving;
4. a second push to repo-a while a client polls team-a with keyA: the served adapter changes
   (the answers change with the pointer), no request fails, and Triton loads nothing: the base
   stays loaded as it was;
5. a restart of the whole tree serves both models again, from what their pointers name.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from bot import demo, demo_run
from bot.runs import list_runs
from families.adapters import is_adapter
from serving.adapters import AdapterRepository
from serving.repository import ModelRepository, read_pointer
from tests.fixtures.stack import running_up_config
from trainer import sample_code

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

SECRET = "e2e-models-webhook-secret"
KEYS = {"team-a": "keyA", "team-b": "keyB"}
PROMPTS = ["def load_", "class Invoice", "def parse_customer(", "import "]

CONFIG = """\
[policy]
debounce_seconds = 1
min_changed_files = 1
cooldown_seconds = 0
reconcile_seconds = 0
tick_seconds = 0.5

[training]
deepspeed = "zero2"
block_size = 256
per_device_batch = 8
learning_rate = 0.002
warmup_steps = 2
max_steps = {max_steps}

[evaluation]
primary_metric = "loss"
margin = 0.01
tolerances = {{ edit_similarity = 0.25, identifier_match = 0.25 }}
num_tasks = 30
max_new_tokens = 8
bootstrap = 200
forward_tasks = 0

{repos}
[[models]]
name = "team-a"
method = "lora"
repos = ["repo-a"]
lora_r = 8
lora_alpha = 16
training = {{ learning_rate = 0.01 }}

[[models]]
name = "team-b"
method = "full"
repos = ["repo-b"]
"""

REPO = """\
[[repos]]
name = "{name}"
url = "{url}"
forge = "github"
full_name = "acme/{name}"
branch = "main"
heldout_fraction = 0.1
heldout_min = 3
num_shards = 2
"""


class Repo:
    """A local bare repository standing in for the forge, with a working clone to push from."""

    def __init__(self, root: Path, name: str, seed: int) -> None:
        self.name, self.bare, self.work = name, root / "forge" / f"{name}.git", root / f"work-{name}"
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        demo.run_git(self.bare.parent, "init", "-q", "--bare", "-b", "main", self.bare.name)
        self.work.mkdir(parents=True)
        demo.run_git(self.work, "init", "-q", "-b", "main")
        demo.run_git(self.work, "remote", "add", "origin", self.bare.as_uri())
        sample_code.generate(self.work, files=60, seed=seed)
        self.commit(f"initial import of {name}")

    def commit(self, message: str) -> str:
        demo.run_git(self.work, "add", "-A")
        demo.run_git(self.work, "commit", "-q", "-m", message)
        demo.run_git(self.work, "push", "-q", "origin", "HEAD:main")
        return demo.run_git(self.work, "rev-parse", "HEAD")

    def push(self, webhook: str, files: int, seed: int) -> tuple[str, float]:
        """New code committed, pushed, and the signed push webhook delivered; (commit, when)."""
        before = demo.run_git(self.work, "rev-parse", "HEAD")
        written = sample_code.generate(self.work / f"batch{seed}", files=files, seed=seed)
        assert written
        after = self.commit(f"batch {seed}")
        started = time.monotonic()
        answer = demo_run.deliver_github(webhook, SECRET, "push", demo_run.github_push_payload(
            f"acme/{self.name}", self.bare.as_uri(), before, after))
        assert answer["status"] == "accepted", answer
        return after, started


class Poller(threading.Thread):
    """Completions of team-a with keyA, back to back over a few prompts; each answer is recorded
    with the adapter the pointer named just before and just after it (equal: that adapter served)."""

    def __init__(self, url: str, pointer_dir: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.pointer_dir = url, pointer_dir
        self.stop = threading.Event()
        self.answers: list[tuple[int, str, object, object]] = []
        self.labels: list[tuple[str, object, object]] = []  # the answer's "model", pointer before/after
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def adapter(self) -> object:
        return (read_pointer(self.pointer_dir) or {}).get("adapter")

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            i, n = n % len(PROMPTS), n + 1
            before, started = self.adapter(), time.monotonic()
            try:
                answer = requests.post(self.url, headers={"Authorization": f"Bearer {KEYS['team-a']}"},
                                       json={"model": "team-a", "prompt": PROMPTS[i], "max_tokens": 12,
                                             "temperature": 0}, timeout=30)
                if answer.status_code == 200 and answer.json()["choices"]:
                    self.latencies.append(time.monotonic() - started)
                    after = self.adapter()
                    self.answers.append((i, answer.json()["choices"][0]["text"], before, after))
                    self.labels.append((answer.json()["model"], before, after))
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.stop.wait(0.05)  # a steady client, not a flood that starves the training beside it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("models")
    repos = {"repo-a": Repo(root, "repo-a", seed=11), "repo-b": Repo(root, "repo-b", seed=22)}
    config = root / "repotune.toml"
    config.write_text(CONFIG.format(max_steps=12, repos="\n".join(
        REPO.format(name=r.name, url=r.bare.as_uri()) for r in repos.values())))
    env = {"REPOTUNE_GITHUB_WEBHOOK_SECRET": SECRET,
           "REPOTUNE_API_KEYS": ";".join(f"{key}:{model}" for model, key in KEYS.items())}
    return {"home": root / "home", "config": config, "env": env, "repos": repos}


def _client(tree, model: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=tree.urls["completions"].removesuffix("/completions"),
                         api_key=KEYS[model], max_retries=0)


def _complete(tree, model: str, prompt: str = "def load_") -> openai.types.Completion:
    return _client(tree, model).completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)


def _runs(home: Path, model: str) -> list:
    return [r for r in list_runs(home, limit=None) if r.model == model]


def _instance_loads(home: Path, model: str) -> int:
    """Model instances Triton initialised for ``model`` so far (one per version load), from its log."""
    return (home / "logs" / "triton.log").read_text(errors="replace").count(
        f"TRITONBACKEND_ModelInstanceInitialize: {model}_")


def _check_scoping(tree) -> None:
    """Each key reaches its own model only: the other is a 404 and missing from /v1/models."""
    for model, other in (("team-a", "team-b"), ("team-b", "team-a")):
        client = _client(tree, model)
        assert [m.id for m in client.models.list().data] == [model]
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=other, prompt="def load_", max_tokens=4, temperature=0)


def test_two_models_lora_and_full_push_to_serving_scoped_keys_adapter_swap(world, capsys) -> None:
    home, repos, figures = world["home"], world["repos"], {}
    with running_up_config(home, world["config"], env=world["env"]) as tree:
        lora = AdapterRepository(home / "triton", "team-a", tree.settings.serving.triton_url)
        full = ModelRepository(home / "triton", "team-b", tree.settings.serving.triton_url)
        # 1. Before any push: team-b serves its base as version 1, team-a its bare base.
        base = lora.base_version()
        assert full.current() == 1 and lora.current() is None and base is not None
        assert read_pointer(lora.model_dir) == {"model": "team-a", "version": base, "adapter": None}
        assert _complete(tree, "team-a").model == "team-a@0"  # the bare base: no adapter version yet
        assert _complete(tree, "team-b").model == "team-b@1"
        _check_scoping(tree)

        # 2. Push to repo-a: only team-a trains, a LoRA adapter, published as trained.
        commit, started = repos["repo-a"].push(tree.urls["webhook_github"], files=20, seed=101)
        run = demo_run.wait_for_run(home, commit, timeout=400)
        figures["push A (LoRA)"] = time.monotonic() - started
        assert run.model == "team-a" and run.status.value == "serving", (run.status, run.error, run.history)
        assert is_adapter(run.checkpoint) and run.artifact == run.checkpoint
        assert run.metrics["gate"]["passed"] is True and run.metrics["baseline"].endswith("models/base")
        assert run.version == 1 and lora.current() == 1 and lora.base_version() == base
        assert _complete(tree, "team-a").model == "team-a@1"  # completions name the adapter version
        assert _runs(home, "team-b") == []

        # 3. Push to repo-b: only team-b trains, in full, converted and published as version 2.
        commit, started = repos["repo-b"].push(tree.urls["webhook_github"], files=20, seed=202)
        run_b = demo_run.wait_for_run(home, commit, timeout=400)
        figures["push B (full)"] = time.monotonic() - started
        assert run_b.model == "team-b" and run_b.status.value == "serving", (run_b.status, run_b.error)
        assert not is_adapter(run_b.checkpoint) and run_b.version == 2 and full.current() == 2
        assert _complete(tree, "team-b").model == "team-b@2"
        assert len(_runs(home, "team-a")) == 1
        _check_scoping(tree)

        # 4. Second push to repo-a while keyA polls team-a. A LoRA run trains a fresh adapter on
        # the base (it does not continue the serving one), so this one trains longer to beat it.
        world["config"].write_text(world["config"].read_text().replace("max_steps = 12", "max_steps = 24"))
        loads = _instance_loads(home, "team-a")
        poller = Poller(tree.urls["completions"], lora.model_dir)
        poller.start()
        commit, started = repos["repo-a"].push(tree.urls["webhook_github"], files=20, seed=303)
        run2 = demo_run.wait_for_run(home, commit, timeout=400)
        figures["push A again"] = time.monotonic() - started
        deadline = time.monotonic() + 30
        while sum(1 for a in poller.answers if a[2] == a[3] == 2) < 2 * len(PROMPTS) and time.monotonic() < deadline:
            time.sleep(0.1)  # a few answers from the new adapter on every prompt
        poller.stop.set()
        poller.join(60)
        assert run2.status.value == "serving", (run2.status, run2.error, run2.metrics.get("gate"))
        assert run2.version == 2 and lora.current() == 2
        baseline = Path(run2.metrics["baseline"]).resolve()
        assert baseline == (lora.model_dir / "adapters" / "1").resolve()  # base + its serving adapter
        _check_swap(poller)
        assert _instance_loads(home, "team-a") == loads, "Triton loaded a model instance for the adapter swap"
        assert lora.base_version() == base and lora._loaded_versions() == [base]
        sizes = {v["version"]: v["bytes"] for v in lora.versions()}
        full_bytes = sum(p.stat().st_size for p in (full.model_dir / "2").rglob("*") if p.is_file())
        latencies = sorted(poller.latencies)

    # 5. A restart loads both models again, each from what its pointer names.
    with running_up_config(home, world["config"], env=world["env"]) as tree:
        assert _complete(tree, "team-a").model == "team-a@2" and lora.current() == 2
        assert _complete(tree, "team-b").model == "team-b@2"
        _check_scoping(tree)

    with capsys.disabled():
        print("\ntwo models: " + ", ".join(f"{k} {v:.1f}s" for k, v in figures.items())
              + f"; {len(poller.answers)} polled team-a completions during the adapter swap, "
              f"{len(poller.failures)} failed, p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms; adapter version {sizes[2] / 1e6:.2f} MB "
              f"vs full version {full_bytes / 1e6:.2f} MB")


def _check_swap(poller: Poller) -> None:
    """No failure; answers came from adapter 1, then adapter 2, never back; every prompt got one
    answer per adapter, and at least one prompt's answer changed with the adapter."""
    assert poller.failures == [], poller.failures[:5]
    settled = [(i, text, before) for i, text, before, after in poller.answers if before == after]
    order = [a for _, _, a in settled]
    assert order[0] == 1 and order[-1] == 2 and order == sorted(order), order
    by_adapter = {n: {i: {t for j, t, a in settled if j == i and a == n} for i in range(len(PROMPTS))}
                  for n in (1, 2)}
    for n, texts in by_adapter.items():
        assert all(len(v) == 1 for v in texts.values()), (n, texts)  # greedy: one answer per prompt
    assert any(by_adapter[1][i] != by_adapter[2][i] for i in range(len(PROMPTS))), by_adapter
    wrong = [(label, a) for label, a, b in poller.labels if a == b and label != f"team-a@{a}"]
    assert not wrong, f"answers named another adapter version than the one serving: {wrong[:5]}"
