from secure_ml.defenses.input_policy import InputPolicy, PolicyDecision

__all__ = ["InputPolicy", "PolicyDecision"]
