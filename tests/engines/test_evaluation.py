"""Equal-error comparisons between samplers' (calls, error) curves (engines/evaluation.py)."""
import math

import pytest

from sprint.engines import evaluation

# error = 10 / calls^2: a straight line in log-log, so interpolation between points is exact
POWER = [(c, 10 / c ** 2) for c in (4, 8, 16)]


def test_frontier_and_calls_for_interpolate_in_log_log():
    assert evaluation.frontier(POWER, 8) == POWER[1][1]
    assert evaluation.frontier(POWER, 11.3) == pytest.approx(10 / 11.3 ** 2)
    assert evaluation.frontier(POWER, 20) is None
    assert evaluation.calls_for(POWER, 10 / 12 ** 2) == pytest.approx(12)
    assert evaluation.calls_for(POWER, 1.0) == 4          # good enough at its fewest calls: a bound
    assert evaluation.calls_for(POWER, 1e-3) is None      # never that good in its measured range


def test_calls_at_equal_error_takes_the_cheapest_peer():
    curves = {"slow": [(c, 2 * e) for c, e in POWER], "fast": POWER}
    need = evaluation.calls_at_equal_error(curves, 6.0, 10 / 12 ** 2)
    assert (need.peer, need.bound) == ("fast", False)
    assert need.ratio == pytest.approx(2.0) and "12.0 calls" in need.text() and "2.00x" in need.text()
    bound = evaluation.calls_at_equal_error(curves, 8.0, 1.0)
    assert bound.bound and bound.ratio == pytest.approx(0.5) and "<= 0.50x" in bound.text()
    none = evaluation.calls_at_equal_error(curves, 8.0, 1e-4)
    assert none.ratio is None and none.text().endswith("within its 16 measured calls: > 2.00x")


def test_best_at_interpolates_each_peer_at_fractional_calls():
    # "late" is worse at 4 calls but better from 8 on: the best peer depends on where it is read
    curves = {"early": POWER, "late": [(4, 1.0), (8, 0.1), (16, 0.02)]}
    assert evaluation.best_at(curves, 4) == ("early", POWER[0][1])
    peer, error = evaluation.best_at(curves, 11.3)
    assert peer == "late" and error == pytest.approx(0.1 * (0.2 ** (math.log(11.3 / 8) / math.log(2))))
    assert evaluation.best_at(curves, 3.5) is None
