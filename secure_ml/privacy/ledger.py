"""The privacy ledger of a checkpoint: what DP training spent, as plain data (Lightning-free).

``SecureClassifier`` stores :meth:`PrivateTraining.state_dict` under ``checkpoint[DP_STATE_KEY]``;
:func:`ledger_from_checkpoint` turns a loaded checkpoint (``torch.load(..., weights_only=True)``)
into the numbers a release artifact, a report or a gate needs.
"""

from typing import Any, Dict, Mapping, Optional

DP_STATE_KEY = "secure_ml_dp"


def ledger_from_checkpoint(ckpt: Mapping[str, Any], delta: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """``{"dp", "accountant", "noise_multiplier", "sample_rate", "steps", "delta", "epsilon"}``, or None for a non-DP checkpoint.

    ``delta`` defaults to the run's ``--model.dp.delta`` (from the checkpoint's hyper-parameters).
    """
    from secure_ml.privacy.engine import epsilon_from_state

    state = ckpt.get(DP_STATE_KEY) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        return None
    if delta is None:
        hp = ckpt.get("hyper_parameters") or {}
        delta = float((hp.get("dp") or {}).get("delta", 1e-5))
    history = state["accountant"].get("history", []) if isinstance(state.get("accountant"), Mapping) else []
    eps = epsilon_from_state(dict(state), delta)
    return {
        "dp": True,
        "accountant": state["mechanism"],
        "noise_multiplier": float(state["noise_multiplier"]),
        "sample_rate": float(state["sample_rate"]),
        "steps": int(sum(n for _, _, n in history)),
        "delta": float(delta),
        "epsilon": eps,
    }
