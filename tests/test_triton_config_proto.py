"""``config.pbtxt`` built from Triton's ModelConfig protobuf means what the hand-written text meant.

``tests/fixtures/triton_configs/*.pbtxt`` were written by the string-building generator this
module replaced; each must parse to exactly the ModelConfig the protobuf builder produces now.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from converter.triton_config import fastertransformer_config, python_backend_config

GOLDEN = Path(__file__).parent / "fixtures" / "triton_configs"
FT = dict(vocab_size=51200, head_num=16, size_per_head=64, inter_size=4096, num_layer=20, rotary_dim=32,
          start_id=50256, end_id=50256)
CASES = {
    "ft-v1.1.pbtxt": lambda: fastertransformer_config("codegen", **FT),
    "ft-v1.2-fp16-tp2.pbtxt": lambda: fastertransformer_config(
        'my"model', **FT, tensor_parallel=2, is_half=True, schema="v1.2", version=7, model_mount="/models/",
        max_seq_len=1024, max_batch_size=8),
    "python-v1.1.pbtxt": lambda: python_backend_config("codegen"),
    "python-v1.2.pbtxt": lambda: python_backend_config("cli", 4, schema="v1.2", model_dir="hf", instance_count=2,
                                                       max_queue_delay_us=500),
}


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("golden", sorted(CASES))
def test_protobuf_config_matches_the_string_built_one(golden: str) -> None:
    old = _parse((GOLDEN / golden).read_text(encoding="utf-8"))
    new = _parse(CASES[golden]())
    assert new == old, text_format.MessageToString(new)
    assert new.SerializeToString(deterministic=True) == old.SerializeToString(deterministic=True)
    # Presence matters to Triton: scalar inputs carry an (empty) reshape, not none at all.
    assert sum(t.HasField("reshape") for t in new.input) == 12
    assert new.HasField("model_transaction_policy") == golden.startswith("ft-v1.2")
    assert new.HasField("dynamic_batching") == golden.startswith("python")
