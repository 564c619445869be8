from secure_ml.attacks.evasion import fgsm, pgd
from secure_ml.attacks.membership import MembershipInference, MembershipReport, membership_inference, membership_metrics
from secure_ml.attacks.sponge import SpongeReport, activation_energy, craft_sponges, gaussian_sponges, sponge_report

__all__ = [
    "MembershipInference",
    "MembershipReport",
    "SpongeReport",
    "activation_energy",
    "craft_sponges",
    "fgsm",
    "gaussian_sponges",
    "membership_inference",
    "membership_metrics",
    "pgd",
    "sponge_report",
]
