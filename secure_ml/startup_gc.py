"""No cyclic garbage collection while ``secure-ml fit|validate|test|predict`` imports and parses; then the start-up's
objects frozen out of later collections (CPython's ``gc.disable`` early, ``gc.freeze`` later pattern).

Importing torch, Lightning, torchmetrics (torch._dynamo, sympy, scipy) and parsing the CLI allocate millions of
long-lived objects; each allocation burst triggers collections that walk all of them again, although almost none is
garbage. :func:`pause` (called by :func:`secure_ml.cli.main` after the start-up prefetch has forked) switches the
collector off; :func:`resume` (called by the CLI once its classes are built, before the run) freezes everything alive
into the permanent generation, so the run's own collections skip it, and switches the collector back on. The run's
own garbage is collected as before; only cycles that became garbage during the imports and the parse stay (they are
few and freed at exit). ``SECURE_ML_GC_PAUSE=0`` switches this off (``benchmarks/startup_gc.py`` compares both).
"""

import gc
import os

_paused = False


def pause() -> None:
    """Switch the collector off until :func:`resume` (a no-op when off already or switched off by the environment)."""
    global _paused
    if os.environ.get("SECURE_ML_GC_PAUSE", "1") != "0" and gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze the objects alive now out of later collections and switch the collector back on (only after :func:`pause`)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
