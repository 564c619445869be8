"""Issue 9, service items: key before body and bounded connections (8), no paths in errors (9), inert guards refused (10),
docs off (11), and 422s that name the check without a statistic, on a policy calibrated on non-members only (6)."""

import json
import re
import socket
import time
from dataclasses import fields, is_dataclass

import httpx
import pytest
import torch

from secure_ml.defenses.input_policy import InputPolicy, PolicyDecision
from secure_ml.errors import ConfigError, DataNotFoundError
from secure_ml.serving.config_loading import config_from_dict
from secure_ml.serving.settings import ServeConfig
from secure_ml.serving.startup import build_policy
from tests.helpers.data import make_mnist_dir, synthetic_digits
from tests.helpers.serving import KEY_A, base_config, post, running, status_of

pytestmark = pytest.mark.serving

CHECKER = {"image": [[float((i + j) % 2) for j in range(28)] for i in range(28)]}  # variance 0.25


def headers_only(port: int, key, length: int = 60000) -> socket.socket:
    """A POST /predict whose headers announce ``length`` body bytes that never come."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key_line = f"X-API-Key: {key}\r\n" if key else ""
    s.sendall(f"POST /predict HTTP/1.1\r\nHost: a\r\n{key_line}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode())
    return s


def first_response(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    try:
        return s.recv(4096)
    except TimeoutError:
        return b""


# ---- item 8: the key is checked before the body is read; connections are bounded by default ------------
@pytest.mark.slow
def test_key_is_checked_before_the_body_is_read(tmp_path):
    """Attack: announce a 60 KB body, send none, without a valid key. Control: with a valid key the server waits for the body."""
    with running(base_config(tmp_path, body={"body_timeout_s": 1.5})) as srv:
        for key in (None, "wrong-key-0123456789"):
            with headers_only(srv.port, key) as s:
                t0 = time.monotonic()
                raw = first_response(s, 3.0)
                assert status_of(raw) == 401 and time.monotonic() - t0 < 1.0 and b"connection: close" in raw.lower()
        with headers_only(srv.port, KEY_A) as s:
            assert first_response(s, 0.7) == b""  # a valid client's body is awaited...
            assert status_of(first_response(s, 3.0)) == 408  # ...up to body.body_timeout_s


@pytest.mark.slow
def test_connections_are_bounded_by_default(tmp_path):
    """Attack: open connections that announce a body and never send it. Only ``limit_concurrency`` of them are ever held;
    the rest are answered 503 at once. Control: under a large cap the server holds every one of them."""
    assert ServeConfig().server.limit_concurrency == 128
    with pytest.raises(ConfigError, match="server.limit_concurrency"):
        config_from_dict({"auth": {"api_keys": [KEY_A]}, "server": {"limit_concurrency": None}})
    for cap, held_expected in ((3, 2), (64, 6)):
        with running(base_config(tmp_path, server={"limit_concurrency": cap})) as srv:
            sockets = []
            try:
                for _ in range(6):
                    sockets.append(headers_only(srv.port, KEY_A))
                    time.sleep(0.1)
                answers = [status_of(first_response(s, 0.5)) for s in sockets]
            finally:
                for s in sockets:
                    s.close()
        assert answers.count(-1) == held_expected and answers.count(503) == 6 - held_expected, (cap, answers)


# ---- item 9: errors say what failed, never where ------------------------------------------------------------
class Broken(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fc = torch.nn.Linear(1, 10)

    def forward(self, x):
        raise OSError(2, "No such file or directory", self.path)


@pytest.mark.slow
def test_error_bodies_never_leak_server_paths(tmp_path):
    secret = str(tmp_path / "secret-model-dir" / "weights.bin")
    assert secret in str(OSError(2, "No such file or directory", secret))  # control: the raw error does carry the path
    bodies = []
    with running(base_config(tmp_path, extraction={"enabled": False}), model=Broken(secret), policy=None) as srv:
        r = post(srv)
        assert r.status_code == 500 and r.json()["reason"] == "internal_error"
        bodies.append(r.text)
    logs = tmp_path / "logs"
    cfg = base_config(tmp_path, audit={"path": str(logs / "audit.jsonl"), "alert_path": str(logs / "alerts")})
    cfg["extraction"] = {"action": "flag", "min_distances": 20, "window": 20}
    with running(cfg) as srv:  # (a log that cannot be written at start-up is refused then: test_serving_cli.py)
        (logs / "alerts").unlink()
        (logs / "alerts").mkdir()  # the alert log becomes a directory: its write fails
        zeros = {"image": [[0.0] * 28 for _ in range(28)]}
        codes = [post(srv, zeros) for _ in range(21)]
        assert codes[-1].status_code == 503 and codes[-1].json()["reason"] == "audit_unavailable"
        bodies.append(codes[-1].text)
        (logs / "audit.jsonl").unlink()
        (logs / "audit.jsonl").mkdir()  # the request log is a directory too
        r = post(srv)
        assert r.status_code == 503
        bodies.append(r.text)
    for body in bodies:
        assert str(tmp_path) not in body and "Errno" not in body and "Traceback" not in body and "/tmp" not in body, body


# ---- item 10: a guard that would silently do nothing is refused at start-up ----------------------------------
@pytest.mark.parametrize(
    "bad,good,message",
    [
        ({"auth": {"enabled": False}}, {"auth": {"enabled": False}, "extraction": {"enabled": False}}, "extraction.enabled"),
        (
            {"extraction": {"action": "throttle"}, "rate_limit": {"enabled": False}},
            {"extraction": {"action": "block"}, "rate_limit": {"enabled": False}},
            "extraction.action: throttle",
        ),
        (
            {"policy": {"calibrate": True, "file": "p.json", "calibration_data_dir": "d"}},
            {"policy": {"file": "p.json"}},
            "policy.calibrate",
        ),
        ({"policy": {"calibrate": True}}, {"policy": {"calibrate": False}}, "calibration_data_dir"),
    ],
)
def test_inert_guards_are_refused(bad, good, message, capsys, monkeypatch, tmp_path):
    from secure_ml.cli import main

    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(json.dumps(bad))  # JSON is YAML
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--ckpt_path", str(tmp_path / "unused"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    config_from_dict(good)  # control: the same guards in a working combination load


# ---- item 11: /docs and /openapi.json are off unless enabled -------------------------------------------------
def test_docs_are_off_by_default(tmp_path):
    with running(base_config(tmp_path)) as srv:
        for path in ("/docs", "/openapi.json"):
            for headers in ({}, {"X-API-Key": KEY_A}):
                r = httpx.get(srv.url + path, headers=headers)
                assert r.status_code in (401, 404) and "openapi" not in r.text.lower(), (path, headers, r.status_code)
    with running(base_config(tmp_path, server={"docs": True})) as srv:  # control: when enabled they answer, keyless
        assert httpx.get(srv.url + "/openapi.json").json()["openapi"]
        assert httpx.get(srv.url + "/docs").status_code == 200


# ---- item 6: a 422 names the check, never a statistic or a limit; calibration reads no training member -------
class Leaky:
    """A policy whose decisions carry statistics in ``detail`` (as ``InputPolicy`` did): they must not leave the service."""

    def check(self, x, model=None):
        return PolicyDecision(False, "energy", "activation energy 4267.2373 exceeds the limit 0.0012345")


def test_422_names_the_check_without_statistics(tmp_path):
    assert "4267.2373" in Leaky().check(None).detail  # control: the decision itself carries the numbers
    with running(base_config(tmp_path, extraction={"enabled": False}), policy=Leaky()) as srv:
        r = post(srv)
    assert r.status_code == 422 and r.json()["reason"] == "energy"
    assert "4267" not in r.text and "0.0012345" not in r.text and not re.search(r"\d", r.json()["detail"])
    assert "4267" not in (tmp_path / "audit.jsonl").read_text()
    real = InputPolicy(max_variance=0.2)  # a real policy: the variance of CHECKER (0.25) is refused without numbers
    with running(base_config(tmp_path, extraction={"enabled": False}), policy=real) as srv:
        r = post(srv, CHECKER)
    assert r.status_code == 422 and r.json()["reason"] == "variance" and not re.search(r"\d", r.text.replace("422", ""))


def test_calibration_reads_only_the_test_split(tmp_path):
    """The calibrated limits are those of the test digits; the training digits (members) would give other limits."""
    from secure_ml.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    root = make_mnist_dir(tmp_path / "data", n_train=300, n_test=200)
    cfg = config_from_dict({"auth": {"api_keys": [KEY_A]}, "policy": {"calibrate": True, "calibration_data_dir": str(root)}})
    policy, source = build_policy(cfg.policy, model)
    assert "200 held-out test digits" in source

    def calibrated(images):
        x = torch.from_numpy(images).float().div(255).unsqueeze(1)
        return InputPolicy.calibrate(model, x, cfg.policy.false_positive_rate)

    assert policy == calibrated(synthetic_digits(200, 1)[0])  # make_mnist_dir's test split: seed + 1
    assert policy != calibrated(synthetic_digits(300, 0)[0])  # control: the training split gives other limits
    for f in (root / "MNIST" / "raw").glob("t10k-*"):
        f.unlink()
    with pytest.raises(DataNotFoundError, match="policy.calibration_data_dir: the MNIST test split"):
        build_policy(cfg.policy, model)  # no test split: refused, never a fall-back to the training digits


FLOAT_OPTIONS = [
    (section.name, f.name)
    for section in fields(ServeConfig)
    if is_dataclass(section.type)
    for f in fields(section.type)
    if "float" in str(f.type).lower()
]


def test_every_float_option_is_listed():
    assert ("body", "body_timeout_s") in FLOAT_OPTIONS and ("rate_limit", "max_qps") in FLOAT_OPTIONS
    assert len(FLOAT_OPTIONS) >= 15  # the parametrisation below would otherwise quietly cover less


@pytest.mark.parametrize("section, name", FLOAT_OPTIONS, ids=lambda v: str(v))
def test_non_finite_limits_are_refused(section, name, monkeypatch):
    """An infinite body timeout, rate or refused-key rate would switch its guard off while it reads as on."""
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    default = getattr(getattr(ServeConfig(), section), name)
    finite = default if default is not None else 0.5
    config_from_dict({section: {name: finite}})  # the control: the same option with a finite value loads
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ConfigError, match=rf"^serve\.yaml: {section}\.{name}: input should be a finite number"):
            config_from_dict({section: {name: value}})
