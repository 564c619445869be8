"""secure-ml: a Lightning pipeline for an image classifier that resists and measures
poisoning, membership inference, evasion, sponge inputs and model theft."""

__version__ = "0.1.0"
