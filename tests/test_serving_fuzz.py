"""1,000+ generated malformed requests over real HTTP: never a 5xx, and the server stays up."""

import json
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.serving import ADMIN, KEY_A, KEY_B, base_config, running

pytestmark = [pytest.mark.serving, pytest.mark.slow]

VALID = [[0.0] * 28 for _ in range(28)]
SAFE_TEXT = string.ascii_letters + string.digits + "-_./~%"

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from([10**400, -(10**400), 1e308]),
)
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=30), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=60
)


@st.composite
def mutated_image(draw):
    """A valid 28x28 image with a few entries, rows or the nesting broken."""
    img = [row[:] for row in VALID]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["pixel", "drop_row", "extend_row", "wrap", "row_scalar", "big"]))
        i, j = draw(st.integers(0, 27)), draw(st.integers(0, 27))
        leaf = draw(json_leaf)
        try:  # a mutation that no longer applies (the image was already reshaped) is skipped
            if kind == "pixel":
                img[i][j] = leaf
            elif kind == "drop_row":
                img.pop(i)
            elif kind == "extend_row":
                img[i].append(leaf)
            elif kind == "wrap":
                img = [img]
            elif kind == "row_scalar":
                img[i] = leaf
            else:
                img[i] = [draw(st.floats(-1e6, 1e6))] * 28
        except (IndexError, TypeError, AttributeError):
            pass
    return {"image": img}


def _encode(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()  # NaN/Infinity literals on purpose


bodies = st.one_of(
    st.binary(max_size=300),
    json_value.map(_encode),
    mutated_image().map(_encode),
    st.dictionaries(st.text(max_size=6), json_value, max_size=3).map(_encode),
    st.integers(60_000, 80_000).map(lambda n: b'{"image": [' + b"0," * (n // 2) + b"0]}"),  # around the 64 KiB limit
    st.just(_encode({"image": VALID})),
)
keys = st.one_of(st.none(), st.sampled_from([KEY_A, KEY_B, ADMIN]), st.text(SAFE_TEXT, max_size=30))
requests = st.tuples(
    st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
    st.one_of(
        st.sampled_from(["/predict", "/predict", "/health", "/metrics", "/predict/"]),
        st.text(SAFE_TEXT, min_size=1, max_size=40).map(lambda s: "/" + s),
    ),
    keys,
    st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
    bodies,
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    cfg = base_config(tmp_path_factory.mktemp("fuzz"), rate_limit={"burst": 100, "max_qps": 2000})
    with running(cfg) as srv, httpx.Client(base_url=srv.url, timeout=10.0) as client:
        yield srv, client


def test_malformed_requests_never_5xx(fuzz_server):
    srv, client = fuzz_server
    seen = {"n": 0, "statuses": set()}

    @settings(
        max_examples=1000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(requests)
    def one(req):
        method, path, key, ctype, body = req
        headers = {"Content-Type": ctype} if ctype else {}
        if key is not None:
            headers["X-API-Key"] = key
        r = client.request(method, path, content=body if method not in ("GET",) else None, headers=headers)
        seen["n"] += 1
        seen["statuses"].add(r.status_code)
        assert r.status_code < 500, (method, path, r.status_code, r.text[:200])
        if r.headers.get("content-type", "").startswith("application/json"):
            r.json()

    one()
    assert seen["n"] >= 1000
    assert {200, 401, 413, 422} <= seen["statuses"]
    assert srv.alive and httpx.get(srv.url + "/health").status_code == 200


class _CountingKey(str):
    """A JSON key that counts its equality tests: how much work the duplicate-key check does, without a clock."""

    comparisons = 0

    def __eq__(self, other):
        type(self).comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_the_duplicate_key_check_is_linear_in_the_keys():
    """From a red-team review: ``keys.count`` per key made a 64 KiB body of ~7,700 keys and one duplicate cost 0.8 s of the
    event loop (every other client waited), from one valid key inside its rate limit."""
    from secure_ml.serving.payload import PayloadError, _unique_keys, parse_image

    n = 3000
    pairs = [(_CountingKey(format(i, "x")), 0) for i in range(n)]
    _CountingKey.comparisons = 0
    with pytest.raises(PayloadError) as exc:
        _unique_keys(pairs + [(_CountingKey(format(n - 1, "x")), 0)])
    assert exc.value.reason == "schema" and "appears twice" in exc.value.detail
    assert _CountingKey.comparisons < 10 * n  # the quadratic search made about n² / 2 = 4.5 million
    assert _unique_keys(pairs[:3]) == {"0": 0, "1": 0, "2": 0}  # the control: distinct keys pass
    body = "{" + ",".join(f'"{i:x}":0' for i in range(7700)) + ',"1e13":0}'
    with pytest.raises(PayloadError, match="appears twice"):
        parse_image(body.encode())
