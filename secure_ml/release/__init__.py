"""Release artifacts: ``secure-ml export`` turns a training checkpoint into what may leave the training machine.

``checkpoint`` reads a ``secure-ml fit`` checkpoint safely; ``artifact`` writes and loads the release
(safetensors weights + a manifest of allow-listed keys); ``cli`` is the ``export`` command.
"""
