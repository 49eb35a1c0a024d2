"""The FIM pipeline on a tokenizer nobody here wrote (issue 14): the real StarCoder2 vocabulary.

Every other FIM test uses :func:`trainer.tiny.init_tiny`'s tokenizer, which we train and whose
sentinels we place ourselves, so a mistake shared by the tokenizer and the family code would go
unseen. Here a tiny StarCoder2 (random weights, 64 wide) carries the real 49,152-token
vocabulary from llama.cpp's test files (fetched once, offline afterwards: ``make vocab``), and
one test walks it through the real components in order:

ingest a git repository → FIM fine-tune → evaluate on FIM tasks against the untrained base →
convert (python backend) → publish and activate on the real Triton → an editor request with a
``suffix`` through the proxy, whose prompt is exactly the family's FIM prompt in real tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import converter
from families import build_fim_prompt, detect_checkpoint_family, get_family
from serving import ModelRepository, ProxyConfig, create_proxy_app
from trainer._vocab import ensure_starcoder_vocab
from trainer.corpus import CorpusSpec, read_records, shard_files, update
from trainer.evaluate import EvalConfig, compare
from trainer.evaluate.tasks import FIM_TASK_KINDS
from trainer.finetune import FinetuneConfig, train

REPO = Path(__file__).resolve().parents[1]
FAMILY = "starcoder2"
MODEL = "real-tokenizer-starcoder2"
PREFIX = "def parse_line(line: str) -> dict:\n    fields = line.split(\",\")\n    "
SUFFIX = "\n    return record\n"
CONTEXT = 128


def _real_tokenizer():
    """The real StarCoder2 vocabulary as a plain ``PreTrainedTokenizerFast`` (no gguf to load later).

    The gguf file names no pad token; StarCoder2 pads with end-of-text, as the tiny models do.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = ensure_starcoder_vocab(REPO / ".cache" / "vocab")
    gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    eos = get_family(FAMILY).eos_token
    return PreTrainedTokenizerFast(tokenizer_object=gguf.backend_tokenizer, bos_token=eos, eos_token=eos,
                                   unk_token=eos, pad_token=eos, model_max_length=CONTEXT)


def _tiny_starcoder2(tokenizer, out: Path) -> Path:
    """A random 2-layer, 64-wide StarCoder2 over the real vocabulary, saved with its tokenizer.

    Weight seed 1, as in test_fim_serving.py: activation refuses a model whose smoke completion
    is empty, and a random model answering end-of-text at once is a matter of seed.
    """
    import torch
    import transformers

    eos = tokenizer.eos_token_id
    config = transformers.Starcoder2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=CONTEXT,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_starcoder2_tokenizer_goes_from_ingest_to_an_editor_fim_request(
        make_repo, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    tokenizer = _real_tokenizer()
    assert len(tokenizer) == 49_152
    fim_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>")]
    assert fim_ids == [1, 2, 3]  # llama.cpp's file, not ours: the sentinels are single, known tokens

    # 1. Ingest: a real git repository of generated code into a sharded corpus.
    repo = make_repo(files=30, seed=14)
    home = tmp_path / "home"
    update(CorpusSpec(name="acme", url=repo.url, heldout_fraction=0.2, heldout_min=4, num_shards=2), home)
    train_files, heldout_files = shard_files(home, "acme", "train"), shard_files(home, "acme", "heldout")
    heldout = list(read_records(heldout_files))
    assert train_files and len(heldout) >= 4

    # 2. The base: detected as StarCoder2 from its folder alone, real vocabulary inside.
    base = _tiny_starcoder2(tokenizer, tmp_path / "base")
    assert detect_checkpoint_family(base).name == FAMILY

    # 3. FIM fine-tune, in process, the family detected.
    run = tmp_path / "run"
    result = train(FinetuneConfig(
        base=str(base), train_files=[str(p) for p in train_files], heldout_files=[str(p) for p in heldout_files],
        output_dir=str(run), block_size=CONTEXT, learning_rate=3e-3, per_device_batch=2, max_steps=4,
        eval_every=4, save_every=100, log_every=1, deepspeed="none", seed=7, fim_rate=0.5, spm_rate=0.5))
    summary = json.loads((run / "train.json").read_text())
    assert summary["steps"] == 4 and summary["extras"]["family"] == FAMILY
    fim = summary["extras"]["data"]["fim"]
    assert (fim["family"], fim["fim_rate"]) == (FAMILY, 0.5)
    assert fim["documents"]["psm"] + fim["documents"]["spm"] > 0
    assert fim["sentinel_tokens_added"] == 3 * (fim["documents"]["psm"] + fim["documents"]["spm"])

    # 4. Evaluate on FIM tasks against the untrained base (that it runs and scores per kind).
    cfg = EvalConfig(num_tasks=8, device="cpu", bootstrap=50, num_threads=1, max_new_tokens=8,
                     block_max_new_tokens=16)
    compared = compare(result.checkpoint, base, heldout, cfg, corpus_version="v1", out_dir=tmp_path / "eval")
    assert compared.config.family == FAMILY and compared.config.kinds == FIM_TASK_KINDS
    assert set(compared.candidate.per_kind) == set(compared.baseline.per_kind) == set(FIM_TASK_KINDS)
    assert sum(int(v["n_tasks"]) for v in compared.candidate.per_kind.values()) == 8
    assert all("<fim_" not in row["prediction"] for row in compared.candidate.rows)

    # 5. Convert, publish and activate on the real Triton.
    artifact = converter.convert(result.checkpoint, tmp_path / "artifact", to="python", model_name=MODEL).artifact
    assert json.loads((artifact / "artifact.json").read_text())["family"] == FAMILY
    deployed = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    deployed.activate(deployed.publish(artifact))

    # 6. An editor's FIM request through the proxy: the suffix is used, in real tokens.
    client = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                          model_name=MODEL, timeout_s=30)).test_client()
    answer = client.post("/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8,
                                                  "temperature": 0})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert "X-RepoTune-Suffix" not in answer.headers
    expected = tokenizer(build_fim_prompt(FAMILY, PREFIX, SUFFIX), add_special_tokens=False)["input_ids"]
    assert expected[0] == 1 and expected[-1] == 2 and expected.count(3) == 1
    assert answer.get_json()["usage"]["prompt_tokens"] == len(expected)
