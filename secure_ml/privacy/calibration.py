"""σ for a target ε: Opacus's own search, with a loop that always ends.

Not ``opacus.accountants.utils.get_noise_multiplier`` itself: it bisects until ε lies within its
tolerance below the target, and when the accountant returns a non-finite ε for small σ (the PRV
accountant overflows there) that never happens, so the search spins forever: ``secure-ml fit
--model.dp.target_epsilon 1000`` hung with 100 % CPU. This is the same search over Opacus's own
accountants and gives the same σ whenever Opacus's ends (``tests/test_dp_calibration.py``); a
non-finite ε counts as above the target, and the bisection stops once σ is known to a relative
``1e-6`` or after :data:`MAX_HALVINGS` halvings. The σ returned always gives ε ≤ target.
"""

import math
import warnings

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.utils import MAX_SIGMA

MAX_HALVINGS = 60  # σ from [0, 20·2^k] to float resolution: more halvings cannot change it


def epsilon_at(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    """ε of ``steps`` Poisson-sampled Gaussian steps; ``inf`` where the accountant cannot tell (overflow, NaN)."""
    acc = create_accountant(mechanism=accountant)
    acc.history = [(sigma, sample_rate, steps)]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            eps = float(acc.get_epsilon(delta=delta))
        except (ArithmeticError, ValueError):
            return math.inf
    return eps if math.isfinite(eps) else math.inf


def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, tolerance: float = 0.01
) -> float:
    """The σ Opacus's search finds for ``target_epsilon``; ``ValueError`` when no σ up to Opacus's ``MAX_SIGMA`` reaches it."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target ε must be a finite number > 0; got {target_epsilon}")
    low, high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:  # doubling, as Opacus: 20, 40, ...
        high *= 2
        eps_high = epsilon_at(high, sample_rate, steps, delta, accountant)
        if high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
    for _ in range(MAX_HALVINGS):
        if target_epsilon - eps_high <= tolerance or high - low <= 1e-6 * high:
            break
        mid = (low + high) / 2
        eps = epsilon_at(mid, sample_rate, steps, delta, accountant)
        if eps < target_epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high
