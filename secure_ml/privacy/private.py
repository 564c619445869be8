"""The DP state of one training run (:class:`PrivateTraining`), its secret noise source, and ε of a saved state.

Lightning-free. :func:`secure_ml.privacy.engine.make_private` builds a ``PrivateTraining``;
the step functions of :mod:`secure_ml.privacy.steps` drive it; ``SecureClassifier`` saves
:meth:`PrivateTraining.state_dict` in every checkpoint.
"""

import hashlib
import secrets
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
from opacus.accountants import create_accountant

_SEED_MASK = (1 << 63) - 1


class NoiseSource:
    """The noise generator, reseeded before every noisy step with a seed derived from a 256-bit secret.

    torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so one seed per run
    gives at most 32 bits of secrecy for the whole run. Here each step ``t`` gets its own seed
    ``SHA-256(key ‖ t)`` (63 bits; the CPU generator uses 32 of them, CUDA's Philox all 64), from
    a key drawn from the OS CSPRNG (``secrets``) per run, or derived from ``noise_seed`` for
    tests. Recovering one step's seed reveals nothing about another step's. torch's generators
    are still not cryptographically secure: see docs/dev/core.md for the exact claim.
    """

    def __init__(self, device: torch.device, seed: Optional[int] = None):
        self.generator = torch.Generator(device=device)
        self.secret = seed is None
        self._key = secrets.token_bytes(32) if seed is None else hashlib.sha256(b"secure-ml noise seed %d" % seed).digest()

    def step_seed(self, step: int) -> int:
        return int.from_bytes(hashlib.sha256(self._key + int(step).to_bytes(8, "little")).digest()[:8], "little") & _SEED_MASK

    def reseed(self, step: int) -> None:
        self.generator.manual_seed(self.step_seed(step))

    def __repr__(self) -> str:  # never print the key
        return f"NoiseSource(secret={self.secret})"


@dataclass
class PrivateTraining:
    """The DP state of one training run.

    Args:
        spec: the step mode (a :class:`secure_ml.privacy.modes.StepMode` of ``MODES``), resolved once at set-up.
        optimizer: the DP optimizer (clips, adds noise, steps the wrapped optimizer, steps the accountant).
        accountant: the Opacus accountant; ``history`` lists ``(σ, q, steps)``.
        noise: the secret noise source shared with ``optimizer``.
        hooks: the mode's hooks on the net (Opacus's, switched off around attacks; a book-keeping clipper, which records only inside its own context).
        criterion: ghost clipping's loss wrapper, whose ``backward()`` runs both passes.
        step_limit: when set (:class:`~secure_ml.callbacks.PrivacyBudget`), no noisy step is taken once ``steps`` reaches it.
    """

    spec: Any
    optimizer: torch.optim.Optimizer
    accountant: Any
    noise_multiplier: float
    sample_rate: float
    expected_batch_size: float
    noise: NoiseSource
    hooks: Optional[Any] = None
    criterion: Optional[Any] = None
    step_limit: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    guards: List[Any] = field(default_factory=list)  # hooks checking the mode's run-time preconditions (privacy.layout)

    @property
    def mode(self) -> str:
        return self.spec.name

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.accountant.history)

    @property
    def exhausted(self) -> bool:
        """True once the privacy budget's step limit is reached: further batches must not be trained on."""
        return self.step_limit is not None and self.steps >= self.step_limit

    def epsilon(self, delta: float) -> Optional[float]:
        """Accountant's ε at ``delta`` after the steps taken; None before the first step (PRV cannot answer then)."""
        return epsilon_of(self.state_dict(), delta, self.steps)

    def attack_context(self) -> ContextManager[None]:
        """The context an attack's backward must run in: the mode's per-sample hooks off (they would record it)."""
        return self._hooks_off() if hasattr(self.hooks, "disable_hooks") else nullcontext()

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        self.hooks.disable_hooks()
        try:
            yield
        finally:
            self.hooks.enable_hooks()

    def state_dict(self) -> Dict[str, Any]:
        """Plain data (loads with ``weights_only=True``): the accountant, σ, q, and the steps trained."""
        return {
            "accountant": self.accountant.state_dict(),
            "mechanism": self.accountant.mechanism(),
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "selection_steps": self.steps,
        }

    def close(self) -> None:
        """Remove the mode's hooks from the net (Opacus's ``cleanup``, a book-keeping clipper's ``close``)."""
        remove = getattr(self.hooks, "cleanup", None) or getattr(self.hooks, "close", None)
        if remove is not None:
            remove()
        self.hooks = None
        for guard in self.guards:
            guard.remove()
        self.guards = []


def _history(state: Dict[str, Any]) -> List[Tuple[float, float, int]]:
    acc = state.get("accountant")
    return [tuple(h) for h in (acc.get("history", []) if isinstance(acc, Mapping) else [])]


def trained_steps(state: Dict[str, Any]) -> int:
    return int(sum(n for _, _, n in _history(state)))


def selection_steps(state: Dict[str, Any]) -> int:
    """Steps whose models influenced the choice of this checkpoint (≥ the steps it trained); see docs/dev/core.md."""
    return max(int(state.get("selection_steps", 0) or 0), trained_steps(state))


def _history_after(state: Dict[str, Any], steps: int) -> List[Tuple[float, float, int]]:
    """The accountant history of ``state`` extended to ``steps``, the steps beyond its own composed with its σ and q."""
    history = _history(state)
    extra = steps - trained_steps(state)
    if extra < 0:
        raise ValueError(f"the checkpoint trained {trained_steps(state)} steps; cannot report ε after {steps}")
    if extra:
        sigma, q = float(state["noise_multiplier"]), float(state["sample_rate"])
        if history and history[-1][:2] == (sigma, q):
            history[-1] = (sigma, q, history[-1][2] + extra)
        else:
            history.append((sigma, q, extra))
    return history


def with_selection_spent(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` to continue training from: its accountant history extended to its selection steps.

    A selected (best) checkpoint's weights depend on every model its selection compared, so a run resumed from it starts
    from the ε of those steps, not of the file's own: otherwise its new steps would replace the selection's in the
    ledger and be reported as free. The resumed run's ``steps`` then count the selection's steps too.
    """
    spent = selection_steps(state)
    if spent == trained_steps(state):
        return state
    accountant = {**state["accountant"], "history": _history_after(state, spent)}
    return {**state, "accountant": accountant, "steps": spent}


def epsilon_of(state: Dict[str, Any], delta: float, steps: Optional[int] = None) -> Optional[float]:
    """ε at ``delta`` of a :meth:`PrivateTraining.state_dict` after ``steps`` (default: its selection steps).

    Steps beyond those recorded in the accountant's history are composed with the run's own σ and q.
    None with no step at all; ∞ with σ = 0.
    """
    steps = selection_steps(state) if steps is None else steps
    history = _history_after(state, steps)
    if not history:
        return None
    if state["noise_multiplier"] == 0 or any(s == 0 for s, _, _ in history):
        return float("inf")
    accountant = create_accountant(state["mechanism"])
    accountant.history = history
    with np.errstate(divide="ignore"):  # PRV at q = 1 (a batch the size of the training set) takes log(1 - q); its ε is right
        return float(accountant.get_epsilon(delta=delta))


def epsilon_from_state(state: Dict[str, Any], delta: float) -> Optional[float]:
    """ε of a saved state over its selection steps: the ε to report for that checkpoint (test, scorecard, gates, export)."""
    return epsilon_of(state, delta)
