"""Pure pieces of serving: request validation, stop handling, the stop-words tensor encoding."""

from __future__ import annotations

import numpy as np
import pytest

from serving.client import encode_stop_words
from serving.completions import ApiError, held_back, parse_request, trim_at_stop
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
