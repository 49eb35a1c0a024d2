"""LoRA adapter versions on the real Triton: the base is loaded once, adapter swaps are a pointer
switch (no model load) with zero failed requests, instant rollback, and refusals that leave the
serving adapter alone."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serving import (
    ProxyConfig,
    RepositoryStateError,
    SmokeTestFailed,
    TritonClient,
    create_proxy_app,
)
from serving.adapters import ADAPTERS_DIR, BARE_BASE, AdapterRepository, open_repository
from serving.repository import ModelRepository, load_tokenizer, read_pointer
from tests.fixtures.triton import serve_app
from tests.test_serving_hotswap import PROMPT, LoadClient

MODEL = "lora"


def make_adapter(base: Path, out: Path, *, seed: int, kind: str = "good") -> Path:
    """A peft LoRA adapter of ``base`` with random non-zero B weights (so its completions differ
    from the base's and from other seeds'); ``kind="nan"`` makes its weights NaN."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from families.adapters import AdapterManifest, checkpoint_digest, write_manifest

    model = AutoModelForCausalLM.from_pretrained(str(base))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "out_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                value = torch.randn(param.shape, generator=gen) * (2.0 if "lora_B" in name else 1.0)
                param.copy_(torch.full_like(param, float("nan")) if kind == "nan" else value)
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    write_manifest(out, AdapterManifest(base=str(base), base_digest=checkpoint_digest(base), family="codegen",
                                        lora={"r": 4, "alpha": 8}))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    root = tmp_path_factory.mktemp("adapters")
    counter = iter(range(1000))

    def make(seed: int, kind: str = "good", base: Path = tiny_model) -> Path:
        return make_adapter(base, root / f"{kind}-{seed}-{next(counter)}", seed=seed, kind=kind)

    return make


@pytest.fixture(scope="module")
def repo(triton_server, triton_repo_root: Path) -> AdapterRepository:
    return AdapterRepository(triton_repo_root, MODEL, triton_server.url, keep=3)


@pytest.fixture(scope="module")
def proxy(repo, triton_server, triton_repo_root: Path):
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30))
    with serve_app(app) as url:
        yield url


def _instance_loads(triton_server) -> int:
    """Model instances Triton initialised so far for this model (one per version load), from its log."""
    return Path(triton_server.log_path).read_text(errors="replace").count(
        f"TRITONBACKEND_ModelInstanceInitialize: {MODEL}_")


def _direct(triton_server, repo: AdapterRepository, adapter: str | None) -> str:
    """Greedy text straight from Triton on the base version with ``adapter`` (no proxy)."""
    base = repo.base_version()
    tok = load_tokenizer(repo.model_dir / str(base))
    gen = TritonClient(triton_server.url, MODEL).generate(
        tok(PROMPT["prompt"])["input_ids"], PROMPT["max_tokens"], top_k=1, end_id=tok.eos_token_id,
        version=base, adapter=adapter)[0]
    return tok.decode(gen.tokens, skip_special_tokens=True)


def test_adapter_swap_under_load_changes_completions_without_reloading_the_base(repo, proxy, triton_server,
                                                                                   adapters):
    first = repo.publish(adapters(1))
    base = repo.base_version()
    # The first adapter wrote the base version (a copy of the checkpoint) and loaded it.
    assert base is not None and (repo.model_dir / str(base) / "model" / "config.json").is_file()
    assert TritonClient(triton_server.url, MODEL).model_ready(base)
    repo.activate(first)
    assert read_pointer(repo.model_dir) == {"model": MODEL, "version": base, "adapter": first}
    first_text, base_text = _direct(triton_server, repo, str(first)), _direct(triton_server, repo, None)
    loads_before = _instance_loads(triton_server)

    with LoadClient(proxy, rate_per_s=25) as load:
        time.sleep(1.0)
        started = time.monotonic()
        second = repo.publish(adapters(2))
        repo.activate(second)
        switched = time.monotonic()
        time.sleep(1.5)
    second_text = _direct(triton_server, repo, str(second))

    failures = [r for r in load.results if r[1] != 200]
    assert not failures, failures[:5]
    assert len({first_text, second_text, base_text}) == 3  # the adapters really change the answers
    before = [r for r in load.results if r[0] < started]
    after = [r for r in load.results if r[0] > switched]
    # The version header names the adapter version that answered (the repository's numbering).
    assert before and all(r[2] == str(first) and r[3] == first_text for r in before)
    assert after and all(r[2] == str(second) and r[3] == second_text for r in after)
    # Nothing was loaded: Triton initialised no model instance, and it still serves only the base,
    # with the adapters folder beside it ignored.
    assert _instance_loads(triton_server) == loads_before
    assert TritonClient(triton_server.url, MODEL).model_ready(base)
    assert repo._loaded_versions() == [base]  # config.pbtxt lists the base version only
    assert (repo.model_dir / ADAPTERS_DIR / str(second) / "adapter_model.safetensors").is_file()
    assert [v["version"] for v in repo.versions()] == [first, second] and repo.current() == second


def test_rollback_is_a_pointer_switch(repo, proxy, triton_server):
    serving = repo.current()
    loads_before = _instance_loads(triton_server)
    back = repo.rollback()
    assert back < serving and repo.current() == back
    resp = requests.post(f"{proxy}/v1/completions", json=PROMPT, timeout=30)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == _direct(triton_server, repo, str(back))
    assert repo.rollback(to=serving) == serving and repo.current() == serving
    assert _instance_loads(triton_server) == loads_before


def test_adapter_on_another_base_is_refused_at_publish(repo, adapters, tiny_model: Path, tmp_path: Path):
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model, other)
    cfg = (other / "config.json").read_text()
    (other / "config.json").write_text(cfg.replace("{", '{\n  "repotune_note": "another base",', 1))
    before = [v["version"] for v in repo.versions()]
    with pytest.raises(RepositoryStateError, match="serves base"):
        repo.publish(adapters(3, base=other))
    # A base that changed after training is refused too (digest), naming what to do.
    changed = adapters(4, base=other)
    (other / "config.json").write_text(cfg)
    with pytest.raises(RepositoryStateError, match="retrain"):
        repo.publish(changed)
    assert [v["version"] for v in repo.versions()] == before


def test_broken_adapter_fails_its_smoke_test_and_the_old_one_keeps_serving(repo, proxy, adapters):
    serving = repo.current()
    with LoadClient(proxy, rate_per_s=10) as load:
        bad = repo.publish(adapters(5, kind="nan"))
        with pytest.raises(SmokeTestFailed, match=f"adapter {bad}"):
            repo.activate(bad)
        time.sleep(0.5)
    assert repo.current() == serving
    assert [v["failed"] for v in repo.versions() if v["version"] == bad][0]
    assert load.results and all(r[1] == 200 for r in load.results), [r for r in load.results if r[1] != 200][:3]


def test_rolling_back_past_the_oldest_adapter_serves_the_bare_base(repo, proxy, triton_server):
    serving = repo.current()
    oldest = min(v["version"] for v in repo.versions() if not v["failed"])
    loads_before = _instance_loads(triton_server)
    base_text = _direct(triton_server, repo, None)
    repo.activate(oldest)
    with LoadClient(proxy, rate_per_s=10) as load:
        assert repo.rollback() == BARE_BASE
        time.sleep(0.5)
    assert repo.current() is None
    assert read_pointer(repo.model_dir) == {"model": MODEL, "version": repo.base_version(), "adapter": None}
    resp = requests.post(f"{proxy}/v1/completions", json=PROMPT, timeout=30)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == base_text
    assert resp.headers["x-repotune-model-version"] == "0" and resp.json()["model"] == f"{MODEL}@0"
    assert load.results and all(r[1] == 200 for r in load.results), [r for r in load.results if r[1] != 200][:3]
    with pytest.raises(RepositoryStateError, match="no earlier healthy version"):
        repo.rollback()
    assert oldest in [v["version"] for v in repo.versions()]  # the adapters stay on disk
    assert repo.rollback(to=serving) == serving and repo.current() == serving
    assert _instance_loads(triton_server) == loads_before  # base and bare base: no model load


def test_an_adapter_canary_serves_a_sticky_share_on_the_same_base(repo, adapters, triton_server,
                                                                   triton_repo_root: Path, tmp_path: Path):
    """[canary] for a LoRA model: the candidate adapter answers a sticky share of clients (the
    OpenAI ``user`` identifies one), production the rest, and promote / stop are pointer
    switches: no model instance is initialised at any point."""
    prod = repo.current()
    loads_before = _instance_loads(triton_server)
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, telemetry_dir=tmp_path / "telemetry"))

    def versions(url: str) -> dict[str, str]:
        out = {}
        for i in range(24):
            resp = requests.post(f"{url}/v1/completions", json={**PROMPT, "user": f"dev-{i}"}, timeout=30)
            assert resp.status_code == 200, resp.text
            out[f"dev-{i}"] = resp.headers["x-repotune-model-version"]
        return out

    with serve_app(app) as url:
        first = repo.publish(adapters(7))
        state = repo.start_canary(first, 0.5)
        assert (state.version, repo.current(), repo.canary()) == (first, prod, state)
        with pytest.raises(RepositoryStateError, match="canary"):
            repo.activate(first)
        split = versions(url)
        assert set(split.values()) == {str(prod), str(first)}  # both answer, by client
        assert versions(url) == split  # sticky
        assert repo.stop_canary() == first and repo.canary() is None and repo.current() == prod
        assert set(versions(url).values()) == {str(prod)}

        second = repo.publish(adapters(8))
        repo.start_canary(second, 0.5)
        assert repo.promote_canary() == second and repo.canary() is None and repo.current() == second
        assert set(versions(url).values()) == {str(second)}
    assert _instance_loads(triton_server) == loads_before


def test_open_repository_picks_the_class(tmp_path: Path):
    assert type(open_repository(tmp_path, "m", adapter=True, triton_url=None)) is AdapterRepository
    full = open_repository(tmp_path, "m", adapter=False, triton_url=None, keep=2)
    assert type(full) is ModelRepository and full.keep == 2


def test_gpu_placement_of_the_base_follows_serving_device(tiny_model: Path, tmp_path: Path) -> None:
    """``serving.device = "gpu"``: a LoRA model's base version is written with KIND_GPU instances on
    GPUs 0..gpus-1 in ``serving.dtype`` (the default stays on the CPU). Written, not loaded: this
    machine's Triton has no GPU."""
    from tritonclient.grpc import model_config_pb2

    from bot import config, serving_version
    from converter import parse_model_config
    from families.adapters import checkpoint_digest

    toml = tmp_path / "repotune.toml"
    toml.write_text(f'home = "{tmp_path / "home"}"\n[training]\nmethod = "lora"\n'
                    '[serving]\ndevice = "gpu"\ngpus = 2\ndtype = "bf16"\ntriton_url = "127.0.0.1:1"\n')
    settings = config.load(toml, env={})
    repo = serving_version.repository(settings)
    assert isinstance(repo, AdapterRepository) and repo.gpus == (0, 1) and repo.dtype == "bf16"
    with repo._locked():
        number, written = repo._base_for(checkpoint_digest(tiny_model), tiny_model, None)
    cfg = parse_model_config((repo.model_dir / str(number) / "config.pbtxt").read_text())
    assert written and [(g.kind, list(g.gpus)) for g in cfg.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, [0, 1])]
    assert cfg.parameters["dtype"].string_value == "bf16"
    cpu = AdapterRepository(tmp_path / "cpu", "m", None)
    with cpu._locked():
        number, _ = cpu._base_for(checkpoint_digest(tiny_model), tiny_model, None)
    cfg = parse_model_config((cpu.model_dir / str(number) / "config.pbtxt").read_text())
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_a_lora_model_rolled_back_to_its_bare_base_is_gated_against_the_base(tmp_path: Path) -> None:
    """After a rollback past the oldest adapter the pointer names no adapter: the baseline is the
    base model again, not the checkpoint of the run whose adapter served last."""
    from bot import config, serving_version
    from bot.runs import RunStatus, new_run, save_run
    from durable import write_json_atomic

    toml = tmp_path / "repotune.toml"
    toml.write_text(f'home = "{tmp_path / "home"}"\n[training]\nmethod = "lora"\n')
    settings = config.load(toml, env={})
    run = new_run(repo="web", trigger={"kind": "push"}, model=settings.serving.model_name)
    run.status, run.version, run.checkpoint = RunStatus.SERVING, 1, str(tmp_path / "run-adapter")
    save_run(settings.home, run)
    model_dir = serving_version.repository(settings, need_triton=False).model_dir
    (model_dir / "1").mkdir(parents=True)
    write_json_atomic(model_dir / "1" / "serving.json", {"model": settings.serving.model_name, "version": 1,
                                                         "adapter": None})
    (model_dir / "serving.json").symlink_to("1/serving.json")
    assert serving_version.active_version(settings) is None
    assert serving_version.serving_checkpoint(settings) == (None, None)
    assert serving_version.baseline(settings) == str(settings.base_model_path())


def test_the_publish_step_of_a_lora_run_starts_an_adapter_canary(adapters, triton_server, triton_repo_root: Path,
                                                                 tmp_path: Path, monkeypatch, redis_url: str):
    """The bot's publish step with ``[canary] enabled`` on a LoRA model: the run enters
    ``canary`` with its adapter as the candidate beside the serving adapter, not a direct switch."""
    from bot import config, jobs
    from bot.runs import RunStatus, load_run, new_run, save_run

    name, home = "lora-bot", tmp_path / "home"
    path = tmp_path / "repotune.toml"
    path.write_text(f'home = "{home}"\nredis_url = "{redis_url}"\n[training]\nmethod = "lora"\n'
                    f'[serving]\nmodel_name = "{name}"\n'
                    f'triton_url = "{triton_server.url}"\n[canary]\nenabled = true\nshare = 0.5\n'
                    f'min_shown = 10000\n[[repos]]\nname = "web"\nurl = "{(tmp_path / "w.git").as_uri()}"\n')
    monkeypatch.setenv("REPOTUNE_CONFIG", str(path))
    settings = config.load(path)
    config.set_current(settings)
    try:
        home.mkdir(parents=True)
        (home / "triton").symlink_to(triton_repo_root, target_is_directory=True)
        production = AdapterRepository(triton_repo_root, name, triton_server.url)
        first = production.publish(adapters(9))
        production.activate(first)
        run = new_run(repo="web", trigger={"kind": "push"}, model=name)
        run.status, run.artifact, run.checkpoint = RunStatus.PUBLISHING, str(adapters(10)), str(tmp_path / "ckpt")
        run.history.append((RunStatus.PUBLISHING.value, run.created, ""))
        save_run(settings.home, run)
        jobs.publish_step(run.id)
        run = load_run(settings.home, run.id)
        assert run.status == RunStatus.CANARY and run.version == first + 1
        state = production.canary()
        assert state is not None and state.version == run.version and production.current() == first
        assert run.metrics["canary"]["version"] == run.version
        production.stop_canary()
    finally:
        config.set_current(None)
