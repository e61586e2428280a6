"""The budget report's statistics, verdict and tables (hand-computed values)."""
import math

import pytest

from benchmarks import budget_report as br


def _rec(column, budget, seed, accs, protocol="dm"):
    return {"dataset": "fashion_mnist", "preset": "reproduce", "column": column, "ipc": 1, "pipc": 10,
            "seed": seed, "budget": budget, "protocol": protocol, "accuracies": accs}


def test_welch_difference_and_interval_match_a_hand_computation():
    a, b = [70.0, 72.0, 74.0], [69.0, 70.0, 71.0]
    d = br.difference(a, b)
    # var(a)/3 = 4/3, var(b)/3 = 1/3; se = sqrt(5/3); df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 2.941...
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((4 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
    assert d["difference"] == pytest.approx(2.0) and d["df"] == pytest.approx(df)
    assert d["t"] == pytest.approx(2.0 / se)
    half = d["ci95"][1] - 2.0
    assert half == pytest.approx(2.0 - d["ci95"][0]) and 2.9 * se < half < 4.4 * se  # t(0.975, ~2.9) ~ 3.2
    assert math.isnan(br.difference([1.0], [2.0, 3.0])["p"])


def test_the_claim_needs_two_points_and_p_below_0_05():
    assert br.claim_holds({"difference": 2.5, "p": 0.01})
    assert not br.claim_holds({"difference": 1.9, "p": 0.001})
    assert not br.claim_holds({"difference": 3.0, "p": 0.2})


def test_tables_and_verdict_from_records():
    recs = [_rec("random", 0, s, [0.5]) for s in range(3)]
    recs += [_rec("dm", 200, s, [0.60 + 0.001 * s, 0.60]) for s in range(3)]
    recs += [_rec("dm_dkkt", 200, s, [0.65 + 0.001 * s, 0.65]) for s in range(3)]
    table = br.summarise(recs)
    assert list(table) == [(1, 10, "dm")] and list(table[(1, 10, "dm")]) == [0, 200]
    assert table[(1, 10, "dm")][200]["dm"]["means"] == pytest.approx([60.0, 60.05, 60.1])
    lines, tests = br.tables(table)
    assert len(tests) == 1 and tests[0]["difference"] == pytest.approx(5.0) and tests[0]["claim_holds"]
    assert any(line.startswith("| 200 | – | 60.05 ± 0.04 (n 3) | 65.05 ± 0.04 (n 3) | +5.00 |") for line in lines)
    assert tests[0]["paired_n"] == 3 and tests[0]["paired_difference"] == pytest.approx(5.0)
    assert tests[0]["paired_p"] < 1e-6  # +5.00 at every seed

    assert "holds at: ipc 1 pipc 10, dm protocol, 200 iterations (+5.00 points" in br.verdict(tests)
    tests[0].update(claim_holds=False)
    assert "holds at none of the 1 budget(s)" in br.verdict(tests)
    assert br.verdict([]).startswith("No budget")
    one_seed = {**tests[0], "p": float("nan"), "difference": 9.0, "budget": 1000}
    assert "(1 budget(s) with fewer seeds not tested.)" in br.verdict([tests[0], one_seed])
    assert "+9.00" not in br.verdict([tests[0], one_seed])


def test_the_paired_difference_uses_only_the_seeds_both_hold():
    a = {"seeds": [0, 1, 2], "means": [70.0, 72.0, 71.0]}
    b = {"seeds": [1, 2, 3], "means": [69.0, 69.5, 50.0]}
    pair = br.paired(a, b)
    assert pair["paired_n"] == 2 and pair["paired_difference"] == pytest.approx((3.0 + 1.5) / 2)
    from scipy import stats

    assert pair["paired_p"] == pytest.approx(stats.ttest_rel([72.0, 71.0], [69.0, 69.5]).pvalue)
