from secure_ml.attacks.evasion import fgsm, pgd

__all__ = ["fgsm", "pgd"]
