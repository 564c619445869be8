"""The privacy ledger of a checkpoint: what DP training spent, as plain data (Lightning-free).

``SecureClassifier`` stores :meth:`PrivateTraining.state_dict` under ``checkpoint[DP_STATE_KEY]``;
:func:`ledger_from_checkpoint` turns a loaded checkpoint (``torch.load(..., weights_only=True)``)
into the numbers a release artifact, a report or a gate needs.

The ε of a checkpoint is the accountant's ε after its ``selection_steps``: every step whose model
influenced the choice of this file (a ModelCheckpoint that keeps the best epoch by ``val/acc``
compared all epochs so far), never fewer than the steps it trained. See
:mod:`secure_ml.privacy.selection` and docs/dev/core.md.
"""

from typing import Any, Dict, Mapping, Optional

DP_STATE_KEY = "secure_ml_dp"


def ledger_from_checkpoint(ckpt: Mapping[str, Any], delta: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """``{"dp", "accountant", "noise_multiplier", "sample_rate", "steps", "selection_steps", "delta", "epsilon"}``, or None without DP.

    ``steps``: noisy steps that trained these weights (a run resumed from a selected file counts that file's
    selection steps here too, :func:`~secure_ml.privacy.private.with_selection_spent`); ``selection_steps``: steps of every model that
    influenced the choice of this checkpoint (≥ ``steps``); ``epsilon``: ε at ``delta`` after
    ``selection_steps`` — the one to report for this file. ``delta`` defaults to the run's
    ``--model.dp.delta`` (from the checkpoint's hyper-parameters).
    """
    from secure_ml.privacy.private import epsilon_from_state, selection_steps, trained_steps

    state = ckpt.get(DP_STATE_KEY) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        return None
    if delta is None:
        hp = ckpt.get("hyper_parameters") or {}
        delta = float((hp.get("dp") or {}).get("delta", 1e-5))
    state = dict(state)
    return {
        "dp": True,
        "accountant": state["mechanism"],
        "noise_multiplier": float(state["noise_multiplier"]),
        "sample_rate": float(state["sample_rate"]),
        "steps": trained_steps(state),
        "selection_steps": selection_steps(state),
        "delta": float(delta),
        "epsilon": epsilon_from_state(state, delta),
    }
