"""Which stored input policies this code reads, and what their versions meant (plain Python: no torch of its own).

:meth:`InputPolicy.to_dict` writes :data:`VERSION`; :func:`stored_fields` reads versions 1 to :data:`VERSION`. A newer
field a version did not have stays at its default (None: the check is off); a limit measured differently from today's
is refused with what to do, never read as if it meant the same thing.
"""

from typing import Set

# v5: max_reconstruction is a pair (faint, background errors); v4: + max_reconstruction, reconstruction_net;
# v3: + max_layer_energy, max_layer_positive; v2: energy over the inputs of weight layers; v1 (no "version"): ReLU calls.
VERSION = 5
V4_FIELDS = ("max_reconstruction", "reconstruction_net")
V3_FIELDS = ("max_layer_energy", "max_layer_positive")


def stored_fields(d: dict, field_names: Set[str]) -> dict:
    """The constructor arguments of a stored policy ``d`` (``field_names``: InputPolicy's fields). ValueError on an
    unknown version or key, on a version's keys it did not have, on a v1 policy with activation limits and on a v4
    policy with a reconstruction limit (both measured differently: recalibrate)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a dict; got {type(d).__name__}")
    d = dict(d)
    version = d.pop("version", 1)
    if version not in range(1, VERSION + 1) or isinstance(version, bool):
        raise ValueError(f"unsupported InputPolicy version {version!r} (this code reads 1 to {VERSION})")
    known = set(field_names) - (set(V4_FIELDS) if version < 4 else set())
    known -= set(V3_FIELDS) if version < 3 else set()
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown InputPolicy field(s): {', '.join(sorted(unknown))}")
    if version == 1 and (d.get("max_energy") is not None or d.get("max_density") is not None):
        raise ValueError(
            "a version-1 policy's energy limits were measured on ReLU calls, not on today's hidden activations; recalibrate it"
        )
    if version == 4 and d.get("max_reconstruction") is not None:
        raise ValueError(
            "a version-4 policy's reconstruction limit bounds one error, today's policy bounds two (faint and background pixels); "
            "recalibrate it (a fit recalibrates every epoch; serve with policy.calibrate: true keeps the stored autoencoder)"
        )
    return d
