"""Stop DP training before ε passes a budget."""

import copy
import math

import numpy as np
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from secure_ml.errors import ConfigError


def epsilon_after(accountant, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after ``steps`` more steps of σ and q on top of ``accountant``'s history (0 for an empty history)."""
    acc = copy.deepcopy(accountant)
    acc.history = list(acc.history) + ([(noise_multiplier, sample_rate, steps)] if steps else [])
    with np.errstate(divide="ignore"):  # PRV at q = 1 takes log(1 - q) (private.epsilon_of)
        return float(acc.get_epsilon(delta=delta)) if acc.history else 0.0


def max_steps_within(accountant, noise_multiplier: float, sample_rate: float, budget: float, delta: float, limit: int) -> int:
    """Largest number of *further* steps (≤ ``limit``; ``limit`` ≤ 0 means unbounded) after which ε stays ≤ ``budget`` (binary search; ε grows with steps)."""

    def eps_after(k: int) -> float:
        return epsilon_after(accountant, noise_multiplier, sample_rate, k, delta)

    if eps_after(0) > budget:
        return 0
    if limit <= 0:  # unbounded training (max_epochs -1): find an upper end by doubling
        limit = 1
        while eps_after(limit) <= budget and limit < 10**9:
            limit *= 2
    lo, hi = 0, limit
    if eps_after(hi) <= budget:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if eps_after(mid) <= budget else (lo, mid)
    return lo


class PrivacyBudget(Callback):
    """Ends training at the last step whose ε (the accountant's, at the model's δ) is still within ``max_epsilon``.

    Exceeding the budget is impossible, not merely discouraged: the run's ``PrivateTraining``
    gets a step limit, and :func:`secure_ml.privacy.steps.dp_step` takes no noisy step (and reads
    no batch) beyond it, whatever ``min_epochs``/``min_steps`` make Lightning do. The callback
    also sets ``trainer.should_stop``, so training ends as soon as Lightning allows.

    Args:
        max_epsilon: the privacy budget ε; training stops before the step that would pass it.
    """

    def __init__(self, max_epsilon: float):
        if not max_epsilon > 0:  # NaN fails too
            raise ConfigError(f"PrivacyBudget max_epsilon must be > 0; got {max_epsilon}")
        self.max_epsilon = max_epsilon
        self._stop_at: int = -1

    def on_train_start(self, trainer, pl_module) -> None:
        private = getattr(pl_module, "private", None)
        if private is None:
            raise ConfigError("PrivacyBudget needs a DP run (--model.dp.enabled true)")
        estimated = trainer.estimated_stepping_batches
        limit = int(estimated) if math.isfinite(estimated) else 0
        left = max_steps_within(
            private.accountant, private.noise_multiplier, private.sample_rate, self.max_epsilon, pl_module.dp.delta, limit
        )
        if left == 0:
            spent = private.epsilon(pl_module.dp.delta) if private.steps else None
            if spent is not None and spent > self.max_epsilon:
                raise ConfigError(
                    f"PrivacyBudget max_epsilon {self.max_epsilon} is already spent (ε before training: {spent:.4g}); raise it or start a fresh run"
                )
            step = epsilon_after(private.accountant, private.noise_multiplier, private.sample_rate, 1, pl_module.dp.delta)
            raise ConfigError(
                f"PrivacyBudget max_epsilon {self.max_epsilon} is below the ε of one more step ({step:.4g} at σ = "
                f"{private.noise_multiplier:.4g}, q = {private.sample_rate:.4g}): raise it, or raise --model.dp.noise_multiplier "
                "or the batch count per epoch"
            )
        self._stop_at = private.steps + left
        private.step_limit = self._stop_at if private.step_limit is None else min(private.step_limit, self._stop_at)
        rank_zero_info(f"secure-ml: privacy budget ε ≤ {self.max_epsilon} allows {left} more steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Checked after each step: Lightning ends the epoch loop before the next batch once should_stop is set.
        if pl_module.private.steps >= self._stop_at and not trainer.should_stop:
            rank_zero_info(f"secure-ml: stopping: one more step would take ε past the budget {self.max_epsilon}")
            trainer.should_stop = True
