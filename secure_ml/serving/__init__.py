"""The secure inference service (``secure-ml serve``), layered; imports only point down this list:

* ``cli`` (the command) → ``server`` (uvicorn) → ``app`` (FastAPI routes, wiring, and the one statement
  of the guard order) → ``middleware`` (request log, client gate, body limit) → the guards: ``auth``,
  ``rate_limit`` + ``blocklist`` (memory or Redis), ``payload``, ``inference`` (input policy + forward),
  ``extraction_detector`` (PRADA) → ``request_log``, ``metrics``, ``errors`` (the one error response);
* ``startup`` (the served net from a release artifact or checkpoint, and the input policy) and
  ``settings`` (the typed serve.yaml) are read by ``cli`` and ``app``.

Nothing here imports Lightning, torchmetrics or torchvision; the extraction *attack* lives in
``secure_ml.attacks.extraction`` and its HTTP client in ``secure_ml.tools.http_client``. A new guard is a
middleware (when it needs only headers) or a step of ``app.predict``, and a line of ``app``'s order.
"""
