"""CodeGen → GPT-J → FasterTransformer, proven by logits on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from converter import (
    CheckpointError,
    FileSizeMismatch,
    VerificationFailed,
    check_artifact,
    check_ft_files,
    codegen_to_gptj,
    convert,
    gptj_to_fastertransformer,
    infer_qkv_blocks,
    parse_model_config,
    verify,
)
from converter.fastertransformer import FTConfig
from converter.gptj import pack_qkv, split_qkv
from converter.triton_config import config_parameters


def _logits(path: Path, ids: torch.Tensor) -> tuple[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return type(model).__name__, model(ids).logits


@pytest.mark.parametrize("shape", [dict(n_head=4, rotary_dim=8), dict(n_head=8, rotary_dim=4, n_layer=3)])
def test_gptj_logits_equal_codegen(make_codegen, tmp_path: Path, shape: dict) -> None:
    src = make_codegen("cg", **shape)
    dst = codegen_to_gptj(src, tmp_path / "gptj")
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "gptj" and cfg["rotary_dim"] == shape["rotary_dim"]
    assert (dst / "tokenizer.json").is_file()
    ids = torch.randint(0, cfg["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    kind_a, a = _logits(src, ids)
    kind_b, b = _logits(dst, ids)
    assert (kind_a, kind_b) == ("CodeGenForCausalLM", "GPTJForCausalLM")
    assert a.abs().max() > 1.0, "logits too flat to prove anything"
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gpus", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_ft_artifact_matches_codegen(codegen_small: Path, tmp_path: Path, gpus: int, dtype: str) -> None:
    result = convert(codegen_small, tmp_path / "art", to="fastertransformer", gpus=gpus,
                     dtype=dtype, schema="v1.2", model_name="cg")
    art = result.artifact
    rep = result.verify
    assert rep is not None and rep["passed"] and rep["tensor_parallel"] == gpus
    assert rep["weight_data_type"] == dtype
    limit = 1e-4 if dtype == "fp32" else 2e-2
    assert max(rep["max_abs_diff"]) < limit, rep
    assert min(rep["argmax_agreement"]) == 1.0
    ft_dir = art / f"{gpus}-gpu"
    rows = json.loads((codegen_small / "config.json").read_text())["vocab_size"]
    assert (ft_dir / "model.wte.bin").stat().st_size == rows * 64 * (4 if dtype == "fp32" else 2)
    assert len(list(ft_dir.glob("model.layers.0.attention.query_key_value.weight.*.bin"))) == gpus
    pbtxt = (art / "config.pbtxt").read_text()
    params = config_parameters(pbtxt)
    assert params["vocab_size"] == str(rows) == str(result.vocab_size)
    assert params["model_checkpoint_path"] == f"/model/cg/1/{gpus}-gpu"
    assert params["is_half"] == str(int(dtype == "fp16"))
    assert parse_model_config(pbtxt).backend == "fastertransformer"
    assert (art / "tokenizer" / "tokenizer.json").is_file()
    assert check_artifact(art)["tensor_parallel"] == gpus


def test_v11_schema_keeps_fp32_files(codegen_small: Path, tmp_path: Path) -> None:
    result = convert(codegen_small, tmp_path / "art", to="fastertransformer", gpus=2,
                     dtype="fp16", schema="v1.1", verify=False)
    assert result.verify is None
    cfg = FTConfig.read(result.artifact / "2-gpu")
    assert cfg.weight_data_type == "fp32"
    params = config_parameters((result.artifact / "config.pbtxt").read_text())
    assert params["is_half"] == "1" and "data_type" not in params


def test_two_step_path_equals_one_step(codegen_small: Path, tmp_path: Path) -> None:
    gptj = codegen_to_gptj(codegen_small, tmp_path / "gptj")
    two = gptj_to_fastertransformer(gptj, tmp_path / "two", tensor_parallel=2)
    one = convert(codegen_small, tmp_path / "one", to="fastertransformer", gpus=2,
                  verify=False).artifact / "2-gpu"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert verify(two, codegen_small).passed


def test_eight_block_qkv_layout(make_codegen, tmp_path: Path) -> None:
    """codegen2-1B/3.7B group qkv rows in 8 blocks: a synthetic checkpoint with that layout."""
    ref = make_codegen("ref4", n_head=8, rotary_dim=4)
    src = tmp_path / "codegen2-1B"
    src.mkdir()
    tensors = load_file(str(ref / "model.safetensors"))
    known = {}
    for name in list(tensors):
        if name.endswith("qkv_proj.weight"):
            q, k, v = split_qkv(tensors[name], 4, 8)
            known[name] = (q, k, v)
            tensors[name] = pack_qkv(q, k, v, mp=8)
            # the 8-block rows really differ from the 4-block ones
            assert not torch.equal(tensors[name], pack_qkv(q, k, v, mp=4))
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ref / "config.json").read_text())
    cfg["_name_or_path"] = "Salesforce/codegen2-1B"
    (src / "config.json").write_text(json.dumps(cfg))
    for p in ref.glob("tokenizer*"):
        (src / p.name).write_bytes(p.read_bytes())
    assert infer_qkv_blocks(cfg) == 8

    gptj = codegen_to_gptj(src, tmp_path / "gptj")
    out = load_file(str(gptj / "model.safetensors"))
    for name, (q, k, v) in known.items():
        base = name.removesuffix("qkv_proj.weight")
        assert torch.equal(out[base + "q_proj.weight"], q)
        assert torch.equal(out[base + "k_proj.weight"], k)
        assert torch.equal(out[base + "v_proj.weight"], v)
    ids = torch.randint(0, cfg["vocab_size"], (1, 32), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(gptj, ids)[1], _logits(ref, ids)[1], atol=1e-5, rtol=0)

    # FT from the 8-block checkpoint reproduces the 4-block reference and the source itself
    result = convert(src, tmp_path / "art", to="fastertransformer", gpus=2)
    assert result.verify["passed"]
    assert verify(result.artifact, ref).passed
    # forcing the wrong block count is caught loudly, with numbers
    with pytest.raises(VerificationFailed, match=r"max \|Δ\| [0-9.e+-]+ .*tolerance"):
        convert(src, tmp_path / "wrong", to="fastertransformer", mp=4)
    assert not (tmp_path / "wrong").exists()


def test_wrong_vocab_in_config_ini_and_pbtxt(codegen_small: Path, tmp_path: Path) -> None:
    art = convert(codegen_small, tmp_path / "art", to="fastertransformer", gpus=2,
                  verify=False).artifact
    ft_dir = art / "2-gpu"
    rows = FTConfig.read(ft_dir).vocab_size
    pbtxt = (art / "config.pbtxt").read_text()

    bad_pbtxt = pbtxt.replace(f'string_value: "{rows}"', f'string_value: "{rows + 905}"')
    assert bad_pbtxt != pbtxt
    with pytest.raises(FileSizeMismatch,
                       match=rf"vocab_size is '{rows + 905}' in config.pbtxt but {rows} in config.ini"):
        check_ft_files(ft_dir, bad_pbtxt)
    (art / "config.pbtxt").write_text(bad_pbtxt)
    with pytest.raises(FileSizeMismatch, match="vocab_size"):
        check_artifact(art)
    (art / "config.pbtxt").write_text(pbtxt)

    ini = (ft_dir / "config.ini").read_text()
    (ft_dir / "config.ini").write_text(ini.replace(f"vocab_size = {rows}", "vocab_size = 51200"))
    with pytest.raises(FileSizeMismatch, match=rf"model.wte.bin holds {rows} rows while config.ini "
                                               r"says vocab_size 51200.*garbage"):
        check_ft_files(ft_dir)
    with pytest.raises(FileSizeMismatch):
        verify(ft_dir, codegen_small)


def test_short_embedding_file_is_caught(codegen_small: Path, tmp_path: Path) -> None:
    ft_dir = convert(codegen_small, tmp_path / "art", to="fastertransformer",
                     verify=False).artifact / "1-gpu"
    wte = ft_dir / "model.wte.bin"
    data = np.fromfile(wte, dtype="<f4")
    data[: -905 * 64].tofile(wte)  # what the original recipe's resized embeddings looked like
    with pytest.raises(FileSizeMismatch, match=r"model.wte.bin: \d+ bytes, but shape"):
        verify(ft_dir, codegen_small)


def test_resized_embeddings_refused_before_ft(make_codegen, tmp_path: Path) -> None:
    src = make_codegen("resized")
    tensors = load_file(str(src / "model.safetensors"))
    for name in ("transformer.wte.weight", "lm_head.weight", "lm_head.bias"):
        tensors[name] = tensors[name][:-7].clone()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="embeddings have .* rows but config.json says"):
        convert(src, tmp_path / "out", to="fastertransformer")


def test_unmapped_tensor_is_an_error(make_codegen, tmp_path: Path) -> None:
    src = make_codegen("extra")
    tensors = load_file(str(src / "model.safetensors"))
    tensors["transformer.h.0.attn.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lora_A.*not in RepoTune's weight map"):
        codegen_to_gptj(src, tmp_path / "gptj")


def test_truncated_safetensors_is_refused(make_codegen, tmp_path: Path) -> None:
    src = make_codegen("cut")
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors"):
        convert(src, tmp_path / "out", to="fastertransformer")
