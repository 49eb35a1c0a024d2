"""Metrics, paired bootstrap and gate rule against hand-computed examples."""

from __future__ import annotations

import math

import pytest

from trainer.evaluate import EvalConfig
from trainer.evaluate.gate import decide
from trainer.evaluate.metrics import (
    aggregate_loss,
    edit_similarity,
    exact_match,
    identifier_match,
    identifiers,
    mean_scores,
)
from trainer.evaluate.stats import Interval, paired_bootstrap


def test_exact_match_compares_stripped_text():
    assert exact_match("  return x\n", "return x") == 1.0
    assert exact_match("return y", "return x") == 0.0


def test_edit_similarity_hand_computed():
    assert edit_similarity("abc", "abd") == pytest.approx(1 - 1 / 3)
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity(" abc\n", "abc") == 1.0
    assert edit_similarity("ab", "abcd") == pytest.approx(0.5)


def test_identifier_match_hand_computed():
    assert identifiers("return store.put(record)") == {"store", "put", "record"}
    assert identifier_match("store.get(record)", "store.put(record)") == pytest.approx(2 / 3)
    assert identifier_match("if record:", "return record") == 1.0  # keywords do not count
    assert identifier_match("x", "42") == 0.0  # no identifiers: falls back to exact match
    assert identifier_match("42", "42") == 1.0


def test_loss_aggregation_is_token_weighted():
    agg = aggregate_loss([(2.0, 1), (4.0, 3)])
    assert agg["loss"] == pytest.approx(1.5)
    assert agg["perplexity"] == pytest.approx(math.exp(1.5))
    assert agg["tokens"] == 4
    assert math.isnan(aggregate_loss([])["loss"])
    assert mean_scores([{"a": 1.0}, {"a": 0.0}], ["a"]) == {"a": 0.5}


def test_paired_bootstrap_constant_shift_and_identity():
    base = [0.1, 0.5, 0.9, 0.3]
    shifted = paired_bootstrap([b + 0.1 for b in base], base, resamples=200)
    assert shifted.delta == pytest.approx(0.1)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)
    same = paired_bootstrap(base, base, resamples=200)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_deterministic_and_covers_the_delta():
    import numpy as np

    rng = np.random.default_rng(5)
    base = rng.uniform(size=300)
    cand = base + rng.normal(0.02, 0.1, size=300)
    a = paired_bootstrap(cand, base, seed=4, label="m")
    b = paired_bootstrap(cand, base, seed=4, label="m")
    c = paired_bootstrap(cand, base, seed=5, label="m")
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low < a.delta < a.high
    assert a.low > 0  # mean shift 0.02 with sd 0.1/sqrt(300) ≈ 0.006: clearly positive
    wide = paired_bootstrap(cand, base, seed=4, label="m", confidence=0.99)
    assert wide.low <= a.low and wide.high >= a.high


def test_paired_bootstrap_ratio_estimator():
    # Candidate: (2 + 2) / (2 + 2) = 1.0 nats/token; baseline (6 + 2) / (2 + 2) = 2.0.
    iv = paired_bootstrap([2.0, 2.0], [6.0, 2.0], candidate_weights=[2, 2], baseline_weights=[2, 2],
                          resamples=300)
    assert iv.delta == pytest.approx(-1.0)
    assert iv.high <= 0.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def _iv(delta: float, low: float, high: float) -> Interval:
    return Interval(delta, low, high, 0.95, 100)


def test_gate_passes_on_clear_improvement_and_names_each_check():
    cfg = EvalConfig()
    cand = {"edit_similarity": 0.60, "exact_match": 0.30, "identifier_match": 0.5, "loss": 1.0}
    base = {"edit_similarity": 0.50, "exact_match": 0.305, "identifier_match": 0.5, "loss": 1.02}
    decision = decide(cand, base, {"edit_similarity": _iv(0.1, 0.05, 0.15)}, cfg)
    assert decision.passed, decision.reasons
    assert decision.improvement == pytest.approx(0.1)
    assert len(decision.reasons) == 5 and decision.failed_checks == []


def test_gate_rejects_small_gain_uncertain_gain_and_secondary_regression():
    cfg = EvalConfig(margin=0.02, tolerances={"exact_match": 0.01, "loss": 0.05})
    base = {"edit_similarity": 0.50, "exact_match": 0.30, "loss": 1.0}
    small = decide({**base, "edit_similarity": 0.51}, base, {"edit_similarity": _iv(0.01, 0.005, 0.02)}, cfg)
    assert not small.passed and small.failed_checks == ["margin"]
    assert "less than the margin 0.02" in small.reasons[0]
    noisy = decide({**base, "edit_similarity": 0.55}, base, {"edit_similarity": _iv(0.05, -0.01, 0.1)}, cfg)
    assert not noisy.passed and noisy.failed_checks == ["interval"]
    regress = decide({"edit_similarity": 0.6, "exact_match": 0.28, "loss": 1.1}, base,
                     {"edit_similarity": _iv(0.1, 0.05, 0.15)}, cfg)
    assert not regress.passed
    assert regress.failed_checks == ["tolerance:exact_match", "tolerance:loss"]


def test_gate_with_a_lower_is_better_primary_metric():
    cfg = EvalConfig(primary_metric="loss", margin=0.1, tolerances={})
    decision = decide({"loss": 1.0}, {"loss": 1.5}, {"loss": _iv(-0.5, -0.6, -0.4)}, cfg)
    assert decision.passed, decision.reasons
    assert decision.improvement == pytest.approx(0.5)
    assert decision.interval == pytest.approx((0.4, 0.6))
    worse = decide({"loss": 1.5}, {"loss": 1.0}, {"loss": _iv(0.5, 0.4, 0.6)}, cfg)
    assert not worse.passed


def test_eval_config_rejects_bad_settings_naming_them():
    with pytest.raises(ValueError, match="primary_metric='bleu'"):
        EvalConfig(primary_metric="bleu")
    with pytest.raises(ValueError, match="unknown metrics"):
        EvalConfig(tolerances={"rouge": 0.1})
    with pytest.raises(ValueError, match="confidence"):
        EvalConfig(confidence=1.0)
