"""σ for a target ε: the same σ as Opacus's search where it ends, and an end where it spins forever."""

import math
import multiprocessing as mp

import pytest
from opacus.accountants.utils import get_noise_multiplier

from secure_ml.privacy.calibration import epsilon_at, noise_for_epsilon


@pytest.mark.parametrize(
    "target, q, steps, accountant",
    [(3.0, 1 / 99, 297, "rdp"), (1.0, 1 / 99, 297, "prv"), (8.0, 1 / 15, 30, "prv"), (0.5, 0.01, 1000, "rdp")],
)
def test_same_sigma_as_opacus_where_its_search_ends(target, q, steps, accountant):
    ours = noise_for_epsilon(target, 1e-5, q, steps, accountant)
    theirs = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
    assert ours == pytest.approx(theirs, rel=1e-12)
    eps = epsilon_at(ours, q, steps, 1e-5, accountant)
    assert target - 0.01 <= eps <= target


def _opacus_search(queue):
    queue.put(get_noise_multiplier(target_epsilon=1000, target_delta=1e-5, sample_rate=1 / 15, steps=2, accountant="prv"))


def test_a_large_target_ends_with_epsilon_below_it():
    """ε = 1000 with PRV: the accountant overflows (NaN) for small σ, and Opacus's search never ends (the control, run in
    a child process and stopped after 8 s; `secure-ml fit --model.dp.target_epsilon 1000` hung). Ours ends, with ε ≤ target."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_opacus_search, args=(queue,), daemon=True)
    child.start()
    child.join(8)
    hung = child.is_alive()
    child.kill()
    assert hung, "control: Opacus's own search ended; this test no longer shows the hang it guards against"
    sigma = noise_for_epsilon(1000, 1e-5, 1 / 15, 2, "prv")
    eps = epsilon_at(sigma, 1 / 15, 2, 1e-5, "prv")
    assert 0 < sigma < 20 and math.isfinite(eps) and eps <= 1000
    assert epsilon_at(sigma / 2, 1 / 15, 2, 1e-5, "prv") > eps  # it went as low as the accountant can still tell


def test_invalid_targets_raise():
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number > 0"):
            noise_for_epsilon(bad, 1e-5, 0.01, 100, "rdp")
