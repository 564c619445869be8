"""Check that `secure-ml serve`, `secure-ml extract` and `secure-ml export` need only the runtime dependencies.

A second virtual environment without the test extras would cost a second torch install, so this
check runs in the test environment and *hides* everything else: an import hook refuses every
top-level module that neither the standard library nor the transitive closure of pyproject.toml's
``[project] dependencies`` (no extras) provides, exactly as if it were not installed. Then it runs
the three commands' ``--help`` and, because ``--help`` stops before the commands' lazy imports,
exercises their real code paths in process: import every module of the service, the tools and the
release package, export and load a release artifact, build the service from serve.yaml (memory and
Redis storage), answer a /predict and a /metrics through the ASGI app, and build the extraction
client. A module of a test extra (pytest, hypothesis, ruff) or any undeclared package that one of these
paths imports fails the check, naming the module.

    python .ci/runtime_deps.py [--also-import MODULE] [--pyproject FILE]   # the negative controls (must fail)
"""

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.metadata as md
import io
import os
import pkgutil
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def runtime_closure(pyproject: Path) -> set:
    """Distribution names of pyproject's runtime dependencies and everything they require (without extras)."""
    import tomllib
    from packaging.requirements import Requirement

    todo = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    seen: set = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            raise SystemExit(f"runtime_deps: the runtime dependency {name!r} is not installed") from None
        for sub in map(Requirement, requires):
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return {name for name, _ in seen}


def allowed_modules(dists: set) -> set:
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"secure_ml", "__main__", sysconfig._get_sysconfigdata_name()}
    for module, owners in md.packages_distributions().items():
        if any(o.lower().replace("_", "-") in dists for o in owners):
            allowed.add(module)
    return allowed


class HideUndeclared(importlib.abc.MetaPathFinder):
    """Wraps every finder of ``sys.meta_path``: a hidden module is found by none (``import`` fails, ``find_spec`` gives None)."""

    def __init__(self, finders: list, allowed: set):
        self.finders, self.allowed, self.refused = finders, allowed, set()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in self.allowed and top not in sys.modules:
            self.refused.add(top)
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def exercise() -> None:
    from secure_ml.cli import main

    for command in ("serve", "extract", "export"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                main([command, "--help"])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    for package in ("secure_ml.serving", "secure_ml.tools", "secure_ml.release"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            importlib.import_module(info.name)
    importlib.import_module("secure_ml.attacks.extraction")

    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*httpx2.*")  # starlette's TestClient nudges towards httpx2; httpx works
    from starlette.testclient import TestClient

    from secure_ml.models import SmallCNN, net_spec
    from secure_ml.release.cli import export_checkpoint
    from secure_ml.serving.app import build_service
    from secure_ml.serving.config_loading import config_from_dict, load_serve_config
    from secure_ml.serving.startup import prepare
    from secure_ml.tools.http_client import HttpOracle, parse_metrics

    key = "runtime-deps-key-0123456789"
    os.environ["SECURE_ML_API_KEYS"] = os.environ["SECURE_ML_ADMIN_KEYS"] = key
    with tempfile.TemporaryDirectory() as tmp:
        net = SmallCNN()
        torch.save(
            {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": {"net": net_spec(net)}},
            f"{tmp}/c.ckpt",
        )
        export_checkpoint(f"{tmp}/c.ckpt", f"{tmp}/release", allow_non_dp=True)
        cfg = load_serve_config(str(REPO / "configs" / "serve.yaml"), {"audit.path": f"{tmp}/audit.jsonl"})
        served, policy, _ = prepare(cfg, f"{tmp}/release")
        service = build_service(cfg, served.model, policy)
        with TestClient(service.asgi) as client:
            r = client.post("/predict", json={"image": [[0.0] * 28] * 28}, headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            assert parse_metrics(client.get("/metrics", headers={"X-API-Key": key}).text)
        build_service(config_from_dict({"rate_limit": {"storage": "redis://127.0.0.1:1/0"}}), served.model)  # client built, not connected
    HttpOracle("http://127.0.0.1:1", key, 0, 0).close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--also-import", default=None, help="import this module too (a negative control: a test extra must fail)")
    p.add_argument("--pyproject", default=str(REPO / "pyproject.toml"), help="whose [project] dependencies count as runtime")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    import packaging.requirements  # noqa: F401  (loaded before the hook: the check's own tool, not the commands')
    import tomllib  # noqa: F401

    dists = runtime_closure(Path(args.pyproject))
    hook = HideUndeclared(list(sys.meta_path), allowed_modules(dists))
    sys.meta_path[:] = [hook]
    try:
        exercise()
        if args.also_import:
            importlib.import_module(args.also_import)
    except ImportError as exc:
        raise SystemExit(f"runtime_deps: FAILED: {exc} (hidden: not a runtime dependency of pyproject.toml)") from None
    print(f"runtime_deps: serve, extract and export work with only the {len(dists)} runtime distributions; hidden: {sorted(hook.refused)}")


if __name__ == "__main__":
    main()
