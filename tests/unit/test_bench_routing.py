"""bench.routing's summary over rounds: medians, not the last round, and every round kept."""

import pytest

from bench.routing import median_of_rounds


def _round(ttft: float, hit: float, errors: int, shares: dict) -> dict:
    return {"completed": 256 - errors, "errors": errors, "duration_s": 18.0, "request_throughput": 14.0,
            "p50_ttft_ms": ttft, "prefix_cache_hit_rate": hit, "replica_shares": shares}


def test_each_figure_is_the_median_over_rounds_and_counts_are_summed():
    # Each figure's median comes from a different round (TTFT the second, hit rate the first, largest
    # share the third), so taking any one round's figures fails.
    rounds = [_round(300, 0.75, 0, {"a": 0.6, "b": 0.4}), _round(400, 0.8, 2, {"a": 0.5, "b": 0.5}),
              _round(900, 0.7, 1, {"b": 0.55, "a": 0.45})]
    out = median_of_rounds(rounds)
    assert out["p50_ttft_ms"] == 400
    assert out["prefix_cache_hit_rate"] == 0.75
    assert out["max_replica_share"] == 0.55  # the median of each round's largest share (0.6, 0.5, 0.55)
    assert out["errors"] == 3 and out["completed"] == 765
    assert out["rounds"] == rounds


def test_an_even_number_of_rounds_averages_the_middle_two():
    out = median_of_rounds([_round(200, 0.5, 0, {"a": 1.0}), _round(600, 0.7, 0, {"a": 1.0})])
    assert out["p50_ttft_ms"] == 400 and out["prefix_cache_hit_rate"] == pytest.approx(0.6)


def test_no_rounds_is_an_error():
    with pytest.raises(ValueError):
        median_of_rounds([])
