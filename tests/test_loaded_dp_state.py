"""Weights loaded from a DP checkpoint (`secure-ml test --ckpt_path`) are evaluated with *their* accountant state.

The membership callback's DP ceiling and RMIA's reference recipe read the checkpoint's state through
``SecureClassifier.dp_state()``; they used to read an attribute renamed long ago, so in ``test`` the
ceiling ``mia/dp_tpr_bound@0.1%fpr`` was never logged and the references trained with the config's σ
(1.0) instead of the σ calibrated for a target ε (configs/hardened.yaml: 2.62).
"""

from types import SimpleNamespace

import pytest
from opacus.accountants import create_accountant

from secure_ml.callbacks.membership import accountant_epsilon
from secure_ml.callbacks.reference_mia import target_recipe
from secure_ml.module import DP_STATE_KEY, SecureClassifier
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.private import epsilon_from_state

SIGMA, Q, STEPS = 2.62, 1 / 99, 297


def _state():
    acc = create_accountant("prv")
    acc.history = [(SIGMA, Q, STEPS)]
    return {
        "accountant": acc.state_dict(),
        "mechanism": "prv",
        "noise_multiplier": SIGMA,
        "sample_rate": Q,
        "steps": STEPS,
        "selection_steps": STEPS,
    }


@pytest.fixture
def loaded():
    """A target-ε model (config σ stays at its default 1.0) after `test --ckpt_path` loaded a checkpoint trained at σ = 2.62."""
    model = SecureClassifier(dp=DPConfig(enabled=True, target_epsilon=1.5))
    model.on_load_checkpoint({DP_STATE_KEY: _state()})
    return model


def test_the_dp_ceiling_uses_the_loaded_accountant_state(loaded):
    eps = accountant_epsilon(loaded, 1e-5)
    assert eps is not None and eps == pytest.approx(epsilon_from_state(_state(), 1e-5))
    assert 0 < eps < 1.5
    assert accountant_epsilon(SecureClassifier(dp=DPConfig(enabled=True)), 1e-5) is None  # control: nothing loaded, no ε


def test_rmia_references_replay_the_loaded_sigma(loaded):
    recipe = target_recipe(loaded, SimpleNamespace(batch_size=64), 3, None, 1000)
    assert recipe.noise_multiplier == pytest.approx(SIGMA) and loaded.dp.noise_multiplier == 1.0


@pytest.mark.parametrize("mechanism", ["prv", "rdp"])
def test_a_batch_as_large_as_the_training_set_has_an_epsilon_and_no_warning(mechanism):
    """q = 1 (the sanitizer left fewer digits than a batch): PRV's log(1 - q) printed numpy's "divide by zero" twice per ε;
    the ε is the Gaussian mechanism's, continuous with q just below 1."""
    import warnings

    from secure_ml.callbacks.privacy_budget import epsilon_after
    from secure_ml.privacy.private import epsilon_of

    state = {"mechanism": mechanism, "noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 3, "accountant": {"history": []}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eps = epsilon_of(state, 1e-3, steps=3)
        assert epsilon_after(create_accountant(mechanism), 1.0, 1.0, 3, 1e-3) == pytest.approx(eps)
    near = epsilon_of({**state, "sample_rate": 0.999}, 1e-3, steps=3)
    assert eps == pytest.approx(near, rel=1e-2) and 5 < eps < 8
