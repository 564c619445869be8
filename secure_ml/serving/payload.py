"""Parse a ``/predict`` body into one ``(1, 28, 28)`` float tensor, or say exactly why not.

The body is parsed by hand rather than by a pydantic model: pydantic's lax mode turns ``"0.5"`` and
``true`` into floats and Python's ``json`` accepts the non-standard ``NaN`` / ``Infinity`` literals, and
every rejection here must carry one of the policy's reasons (422). Reasons:

* ``json``: not UTF-8 JSON, or nested too deeply (``RecursionError`` is caught);
* ``schema``: not an object with exactly the key ``image``;
* ``shape``: not 28 rows of 28 entries (a number where a row belongs, a list where a pixel belongs);
* ``dtype``: a pixel that is not a JSON number (string, boolean, null, object);
* ``non_finite``: a ``NaN`` / ``Infinity`` literal, or a number that overflows to infinity (``1e999``);
* ``range``: an integer too large to be a float at all.

Range, variance and energy limits on the values are the ``InputPolicy``'s job, after this.
"""

import json
import math
from typing import Any, List

import torch

SIDE = 28
MAX_DETAIL = 120


class PayloadError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:MAX_DETAIL]


def _reject_constant(name: str) -> Any:
    raise PayloadError("non_finite", f"the JSON literal {name} is not a finite number")


def _kind(value: Any) -> str:
    return {bool: "boolean", str: "string", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _pixel(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, list):
            raise PayloadError("shape", f"{where} is a list, expected a number (too much nesting)")
        raise PayloadError("dtype", f"{where} is a {_kind(value)}, expected a number")
    try:
        f = float(value)
    except OverflowError:
        raise PayloadError("range", f"{where} is an integer too large for a float") from None
    if not math.isfinite(f):
        raise PayloadError("non_finite", f"{where} is not finite")
    return f


def _rows(image: Any) -> List[List[float]]:
    if not isinstance(image, list):
        reason = "shape" if isinstance(image, (int, float)) and not isinstance(image, bool) else "dtype"
        raise PayloadError(reason, f'"image" is a {_kind(image)}, expected {SIDE} rows of {SIDE} numbers')
    if len(image) != SIDE:
        raise PayloadError("shape", f'"image" has {len(image)} rows, expected {SIDE}')
    rows = []
    for i, row in enumerate(image):
        if not isinstance(row, list):
            reason = "shape" if isinstance(row, (int, float)) and not isinstance(row, bool) else "dtype"
            raise PayloadError(reason, f"row {i} is a {_kind(row)}, expected a list of {SIDE} numbers")
        if len(row) != SIDE:
            raise PayloadError("shape", f"row {i} has {len(row)} entries, expected {SIDE}")
        rows.append([_pixel(v, f"pixel [{i}][{j}]") for j, v in enumerate(row)])
    return rows


def _int(text: str) -> int:
    """An integer literal, its length checked first: one too long for Python's int parser is out of range, not bad JSON."""
    if len(text.lstrip("-")) > 400:  # > 1e400: no float holds it (and Python refuses int strings over 4,300 digits)
        raise PayloadError("range", f"an integer of {len(text.lstrip('-'))} digits is too large for a float")
    return int(text)


def _unique_keys(pairs) -> dict:
    """A JSON object, refused when a key repeats (json.loads would keep the last "image" of two).

    Linear in the number of keys: this runs on the event loop, and a quadratic search for the repeated key let one
    64 KiB body of ~7,700 keys hold every other client for 0.8 s (tests/test_serving_fuzz.py).
    """
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise PayloadError("schema", f"the key {key[:40]!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def parse_image(body: bytes) -> torch.Tensor:
    """``body`` (raw bytes) → float64 tensor ``(1, 28, 28)`` (float64 so 1e300 fails ``range``, not ``non_finite``)."""
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_int=_int, object_pairs_hook=_unique_keys)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError("json", "the JSON nests too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise PayloadError("json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(data, dict) or "image" not in data:
        raise PayloadError("schema", 'expected a JSON object {"image": [[28 numbers] x 28]}')
    extra = sorted(k for k in data if k != "image")
    if extra:
        raise PayloadError("schema", f'unexpected key {extra[0][:40]!r}; only "image" is accepted')
    return torch.tensor(_rows(data["image"]), dtype=torch.float64).unsqueeze(0)
