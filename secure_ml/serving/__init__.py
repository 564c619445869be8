"""The secure inference service (``secure-ml serve``) and its extraction-attack simulator (``secure-ml extract``).

Modules, one concept each: ``config`` (serve.yaml), ``model_loading`` (safe checkpoint loading),
``body_limit``, ``auth``, ``rate_limit``, ``payload``, ``policy``, ``inference``, ``extraction`` (PRADA),
``audit``, ``metrics``, ``app`` (wiring), ``server`` (uvicorn), ``cli``, ``simulator``.
Nothing here imports the Lightning Trainer or SecureClassifier: the service needs only ``SmallCNN``.
"""
