"""Attacks as plain functions on torch tensors: evasion, membership inference, sponges, model extraction.

Imports are lazy (PEP 562): ``from secure_ml.attacks import fgsm`` loads only ``evasion``, so a
Lightning-free caller (the inference service imports ``attacks.sponge`` through the input policy)
never pays for ``membership`` (torchmetrics) or ``extraction``.
"""

import importlib

_HOME = {
    "fgsm": "evasion",
    "pgd": "evasion",
    "MembershipReport": "membership",
    "membership_inference": "membership",
    "membership_metrics": "membership",
    "SpongeReport": "sponge",
    "activation_energy": "sponge",
    "craft_sponges": "sponge",
    "gaussian_sponges": "sponge",
    "sponge_report": "sponge",
    "Answer": "extraction",
    "steal": "extraction",
    "train_copy": "extraction",
    "jacobian_augment": "extraction",
    "agreement": "extraction",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'secure_ml.attacks' has no attribute '{name}'")
    return getattr(importlib.import_module(f"secure_ml.attacks.{_HOME[name]}"), name)


def __dir__():
    return __all__
