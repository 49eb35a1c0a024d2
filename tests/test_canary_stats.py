"""The canary's pure parts: sticky routing, the look schedule, the interval and the decisions for
known acceptance rates (serving.canary)."""

from __future__ import annotations

import random

from serving.canary import (
    EXTEND,
    PROMOTE,
    ROLLBACK,
    Arm,
    CanaryPolicy,
    CanaryState,
    canary_of,
    decide,
    difference_interval,
    look_confidence,
    look_index,
    routes_to_canary,
)

POLICY = CanaryPolicy(min_shown=200, margin=0.02, confidence=0.95, max_duration_seconds=3600)


def _arms(p_prod: float, p_cand: float, n: int) -> tuple[Arm, Arm]:
    return Arm(1, n, round(p_prod * n)), Arm(2, n, round(p_cand * n))


def test_routing_is_sticky_close_to_the_share_and_differs_per_canary():
    state = CanaryState(version=7, share=0.2, since=0.0)
    clients = [f"{i:016x}" for i in range(4000)]
    first = [routes_to_canary(c, state) for c in clients]
    assert first == [routes_to_canary(c, state) for c in clients]  # sticky
    assert 0.17 < sum(first) / len(clients) < 0.23
    other = [routes_to_canary(c, CanaryState(8, 0.2, 0.0)) for c in clients]
    assert other != first  # another canary samples another slice
    assert not routes_to_canary("", state) and not routes_to_canary("abc", None)


def test_pointer_entries_that_are_malformed_mean_no_canary():
    assert canary_of({"version": 1, "canary": {"version": 2, "share": 0.1, "since": 5}}) == CanaryState(2, 0.1, 5.0)
    for bad in ({"version": 1}, {"version": 1, "canary": {"version": 2, "share": 1.5}},
                {"version": 1, "canary": "x"}, {"version": 1, "canary": {"share": 0.1}}, None):
        assert canary_of(bad) is None


def test_looks_double_and_spend_alpha_that_sums_to_the_total():
    assert look_index(Arm(1, 199, 0), Arm(2, 5000, 0), 200) == 0
    assert look_index(Arm(1, 200, 0), Arm(2, 5000, 0), 200) == 1
    assert look_index(Arm(1, 399, 0), Arm(2, 400, 0), 200) == 1
    assert look_index(Arm(1, 400, 0), Arm(2, 800, 0), 200) == 2
    spent = sum(1 - look_confidence(k, 0.95) for k in range(1, 100_000))
    assert 0.0499 < spent <= 0.05
    assert look_confidence(1, 0.95) > 0.95 and look_confidence(3, 0.95) > look_confidence(2, 0.95)


def test_interval_contains_the_observed_difference_and_narrows_with_data():
    d, lo, hi = difference_interval(Arm(2, 100, 60), Arm(1, 100, 50), 0.95)
    assert abs(d - 0.10) < 1e-9 and lo < d < hi and lo >= -1 and hi <= 1
    _, lo2, hi2 = difference_interval(Arm(2, 10_000, 6000), Arm(1, 10_000, 5000), 0.95)
    assert hi2 - lo2 < (hi - lo) / 5 and lo2 > 0


def test_a_better_candidate_is_promoted_at_the_first_look():
    d = decide(*_arms(0.40, 0.60, 200), POLICY, elapsed_s=60)
    assert d.action == PROMOTE and d.look == 1 and d.low > -POLICY.margin
    assert "promoted" in d.reason and "v2 60.0% of 200" in d.summary()


def test_a_clearly_worse_candidate_is_rolled_back():
    d = decide(*_arms(0.60, 0.30, 200), POLICY, elapsed_s=60)
    assert d.action == ROLLBACK and d.high < 0 and "clearly worse" in d.reason


def test_too_few_shown_extends_then_rolls_back_at_the_limit():
    prod, cand = _arms(0.5, 0.5, 50)
    assert decide(prod, cand, POLICY, elapsed_s=60).action == EXTEND
    late = decide(prod, cand, POLICY, elapsed_s=3600)
    assert late.action == ROLLBACK and "too few" in late.reason


def test_an_equal_candidate_is_undecided_early_and_promoted_with_enough_data():
    early = decide(*_arms(0.50, 0.50, 200), POLICY, elapsed_s=60)
    assert early.action == EXTEND and early.low < -POLICY.margin < 0 < early.high
    # The same look is not taken twice: no alpha is spent again until the sample doubles.
    assert decide(*_arms(0.50, 0.60, 300), POLICY, elapsed_s=60, last_look=1).action == EXTEND
    big = decide(*_arms(0.50, 0.50, 200 * 2 ** 8), POLICY, elapsed_s=60, last_look=8)
    assert big.look == 9 and big.action == PROMOTE


def test_undecided_at_the_limit_rolls_back_conservatively():
    d = decide(*_arms(0.50, 0.49, 400), POLICY, elapsed_s=4000, last_look=2)
    assert d.action == ROLLBACK and "undecided" in d.reason and "conservative" in d.reason


def test_error_rates_over_repeated_looks_stay_below_alpha():
    """Simulated canaries: a candidate worse by exactly the margin is promoted in at most alpha of
    them, although every one is looked at up to 6 times."""
    rng = random.Random(11)
    policy = CanaryPolicy(min_shown=100, margin=0.05, confidence=0.9, max_duration_seconds=1e9)
    wrong = 0
    trials = 300
    for _ in range(trials):
        prod_acc = cand_acc = shown = last = 0
        for look in range(1, 7):
            target = 100 * 2 ** (look - 1)
            prod_acc += sum(rng.random() < 0.50 for _ in range(target - shown))
            cand_acc += sum(rng.random() < 0.45 for _ in range(target - shown))
            shown = target
            d = decide(Arm(1, shown, prod_acc), Arm(2, shown, cand_acc), policy, 0, last)
            last = d.look
            if d.action != EXTEND:
                wrong += d.action == PROMOTE
                break
    assert wrong / trials <= 0.1
