"""Pure pieces of serving: request validation, stop handling, the stop-words tensor encoding, the
protocol shapes, limits, tokens and prompt fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving._auth import key_matches, mint_token, presented_credential, token_valid
from serving.client import encode_stop_words
from serving.completions import (
    ApiError,
    RequestLimits,
    choice,
    held_back,
    parse_request,
    trim_at_stop,
)
from serving.protocols import (
    EventLog,
    is_tabby_request,
    parse_event,
    parse_infill,
    parse_llama_completion,
    parse_tabby,
)
from serving.python_backend.model import parse_stop_words


def test_stop_words_round_trip_through_the_ft_encoding() -> None:
    seqs = [[5, 6], [7], [8, 9, 10]]
    encoded = encode_stop_words(seqs, batch=2)
    assert encoded.shape == (2, 2, 6)
    assert encoded[0, 1].tolist() == [2, 3, 6, -1, -1, -1]
    assert parse_stop_words(encoded, 2) == [seqs, seqs]
    assert parse_stop_words(None, 1) == [[]]
    assert parse_stop_words(np.array([[[0], [-1]]], dtype=np.int32), 1) == [[]]


def test_stop_string_stays_whole() -> None:
    req = parse_request({"prompt": "x", "stop": "\n\n"}, 100)
    assert req.stop == ["\n\n"]
    assert trim_at_stop("a\nb\n\nc", req.stop) == ("a\nb", True)
    assert trim_at_stop("abc", ["z", "bc"]) == ("a", True)
    assert trim_at_stop("abc", []) == ("abc", False)
    assert held_back("foo\n", ["\n\n"]) == 1
    assert held_back("foo", ["\n\n"]) == 0


@pytest.mark.parametrize("body, param", [
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "stop": 5}, "stop"),
])
def test_bad_requests_name_the_parameter(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_request(body, 2048)
    assert info.value.status == 400
    assert info.value.body()["error"]["param"] == param


def test_defaults_follow_openai() -> None:
    req = parse_request({"prompt": "x"}, 2048)
    assert (req.max_tokens, req.temperature, req.top_p, req.n, req.stream) == (16, 1.0, 1.0, 1, False)


# ----------------------------------------------------------------------------- protocol edge

def test_stream_booleans_are_parsed_strictly() -> None:
    assert parse_request({"prompt": "x", "stream": "false"}, 100).stream is False
    assert parse_request({"prompt": "x", "stream": "true"}, 100).stream is True
    assert parse_request({"prompt": "x", "stream": True}, 100).stream is True
    for bad in ("no", 1, "yes", []):
        with pytest.raises(ApiError) as info:
            parse_request({"prompt": "x", "stream": bad}, 100)
        assert (info.value.status, info.value.param) == (400, "stream")


def test_empty_stops_are_ignored_and_stop_lists_are_limited() -> None:
    assert parse_request({"prompt": "x", "stop": ""}, 100).stop == []
    assert parse_request({"prompt": "x", "stop": ["", "\n"]}, 100).stop == ["\n"]
    limits = RequestLimits(max_stops=2, max_stop_chars=4)
    with pytest.raises(ApiError, match="at most 2 stop strings"):
        parse_request({"prompt": "x", "stop": ["a", "b", "c"]}, limits)
    with pytest.raises(ApiError, match="at most 4 characters"):
        parse_request({"prompt": "x", "stop": "abcde"}, limits)


def test_seed_is_drawn_fresh_unless_given() -> None:
    seeds = {parse_request({"prompt": "x"}, 100).seed for _ in range(8)}
    assert len(seeds) > 1
    assert parse_request({"prompt": "x", "seed": 42}, 100).seed == 42


def test_prompt_characters_and_choices_are_limited_before_tokenizing() -> None:
    limits = RequestLimits(max_prompt_chars=10, max_choices=4)
    with pytest.raises(ApiError) as info:
        parse_request({"prompt": "x" * 6, "suffix": "y" * 5}, limits)
    assert (info.value.status, info.value.code) == (413, "prompt_too_long")
    with pytest.raises(ApiError) as info:
        parse_request({"prompt": ["a", "b", "c"], "n": 2}, limits)
    assert (info.value.status, info.value.code) == (400, "too_many_choices")
    assert parse_request({"prompt": ["a", "b"], "n": 2}, limits).n == 2


def test_include_usage_and_logprobs_choice_shape() -> None:
    req = parse_request({"prompt": "x", "logprobs": 1, "stream_options": {"include_usage": True}}, 100)
    assert req.include_usage is True

    class Tok:
        def decode(self, ids):
            return "".join(chr(96 + i) for i in ids)

    c = choice(0, "ab", "stop", Tok(), req, "x", tokens=[1, 2], log_probs=[-0.5, -1.0], offset=3)
    assert c["logprobs"] == {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.0],
                             "top_logprobs": [{"a": -0.5}, {"b": -1.0}], "text_offset": [3, 4]}


def test_copilot_tokens_are_signed_expiring_and_never_the_key() -> None:
    token, expires = mint_token("s3cret", 60, now=1000)
    assert "s3cret" not in token and expires == 1060
    assert token_valid(token, ["other", "s3cret"], now=1059)
    assert not token_valid(token, ["s3cret"], now=1061)  # expired
    assert not token_valid(token, ["other"], now=1000)  # its key was removed
    forged = token.rsplit(".", 1)[0] + "." + "0" * 64
    assert not token_valid(forged, ["s3cret"], now=1000)
    assert key_matches("s3cret", ["a", "s3cret"]) and not key_matches("s3cre", ["s3cret"])
    assert presented_credential("token abc") == "abc" == presented_credential("Bearer abc")
    assert presented_credential("Basic abc") == ""


def test_llama_and_tabby_requests_become_completion_requests() -> None:
    limits = RequestLimits(max_tokens=256)
    infill = parse_infill({"input_prefix": "def f(", "prompt": "x", "input_suffix": "\nreturn 1",
                           "input_extra": [{"filename": "a.py", "text": "A = 1"}], "n_predict": 20,
                           "stop": ["\n\n"], "stream": "true"}, limits)
    assert (infill.prompts, infill.suffix, infill.extra) == (["def f(x"], "\nreturn 1", (("a.py", "A = 1"),))
    assert (infill.max_tokens, infill.stop, infill.stream) == (20, ["\n\n"], True)
    assert parse_infill({"input_prefix": "a", "n_predict": -1}, limits).max_tokens == 128
    with pytest.raises(ApiError, match="input_extra"):
        parse_infill({"input_prefix": "a", "input_extra": "nope"}, limits)
    assert parse_llama_completion({"prompt": "p", "n_predict": 3}, limits).max_tokens == 3
    body = {"language": "python", "segments": {"prefix": "def f():\n", "suffix": "\n"}}
    assert is_tabby_request(body) and not is_tabby_request({"prompt": "x"})
    tabby = parse_tabby(body, limits)
    assert (tabby.prompts, tabby.suffix, tabby.temperature) == (["def f():\n"], "\n", 0.0)
    with pytest.raises(ApiError):
        parse_tabby({"segments": "x"}, limits)


def test_tabby_events_are_validated_and_appended_as_json_lines(tmp_path) -> None:
    event = {"type": "select", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "v"}
    assert parse_event(event) == event
    for bad in ({"type": "nope"}, {"type": "view", "choice_index": 0}, {"type": "view", "completion_id": "c",
                                                                        "choice_index": -1}, []):
        with pytest.raises(ApiError) as info:
            parse_event(bad)
        assert info.value.status == 400
    log = EventLog(tmp_path / "events")
    path = log.append(event, 1.5)
    log.append({**event, "type": "view"}, 2.5)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["type"] for e in lines] == ["select", "view"]
    assert lines[0]["received_at"] == 1.5


def test_fim_prompt_and_trimming_keep_the_text_near_the_cursor(tiny_model) -> None:
    from transformers import AutoTokenizer

    from families import get_family
    from serving._fitting import fit, render

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    star = get_family("starcoder2")
    assert render(star, "P", "S", [("a.py", "A")], fim=True) == "<file_sep>a.py\nA\n<fim_prefix>P<fim_suffix>S<fim_middle>"
    assert render(get_family("codegen"), "P", "S", [("a.py", "A")], fim=False) == "A\nP"
    prefix = "".join(f"line_{i} = {i}\n" for i in range(300))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(300))
    fitted = fit(tok, None, prefix, suffix, (), fim=False, max_tokens=500, window=256, strict=False)
    assert fitted.max_tokens == 64 and len(fitted.ids) + fitted.max_tokens <= 256
    assert fitted.text.endswith("line_299 = 299\n") and fitted.text.startswith("line_")
    assert prefix.endswith(fitted.text) and fitted.trimmed_prefix == len(prefix) - len(fitted.text)
    with pytest.raises(ApiError) as info:
        fit(tok, None, prefix, "", (), fim=False, max_tokens=500, window=256, strict=True)
    assert info.value.code == "context_length_exceeded"


def test_fim_trimming_keeps_the_prefix_end_and_the_suffix_start_at_line_boundaries(tiny_model) -> None:
    from transformers import AutoTokenizer

    from families import get_family
    from serving._fitting import fit

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    prefix = "".join(f"line_{i} = {i}\n" for i in range(300))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(300))
    fitted = fit(tok, get_family("starcoder2"), prefix, suffix, [("other.py", "Z = 0\n" * 50)], fim=True,
                 max_tokens=4096, window=512, strict=False)
    assert fitted.max_tokens == 128 and len(fitted.ids) + fitted.max_tokens <= 512
    assert fitted.dropped_extra == 1 and "other.py" not in fitted.text
    head, _, rest = fitted.text.partition("<fim_suffix>")
    kept_prefix = head.removeprefix("<fim_prefix>")
    kept_suffix = rest.removesuffix("<fim_middle>")
    assert kept_prefix.startswith("line_") and prefix.endswith(kept_prefix)
    assert kept_suffix.startswith("after_0 = 0\n") and kept_suffix.endswith("\n") and suffix.startswith(kept_suffix)
    assert 0 < len(kept_suffix) < len(kept_prefix)  # the code before the cursor matters most
    assert (fitted.trimmed_prefix, fitted.trimmed_suffix) == (len(prefix) - len(kept_prefix),
                                                              len(suffix) - len(kept_suffix))
