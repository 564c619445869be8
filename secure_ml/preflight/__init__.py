"""``secure-ml preflight``: the deployment checklist of ``docs/deployment.md``, every item a program can check.

:mod:`.deployment` reads what is being deployed (serve.yaml, the model artefact, the gates and test
metrics) through the serving and release packages' own loaders; :mod:`.checks` holds one function per
checklist item; :mod:`.cli` prints pass/fail per item with its fix and sets the exit status.
"""
