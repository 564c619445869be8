"""Checklist items about the model: artefact integrity, input policy, privacy budget, security gates (docs/deployment.md §5-7)."""

import json
import math
from pathlib import Path
from typing import Any, List, Optional

from secure_ml.preflight.deployment import Deployment
from secure_ml.preflight.service_checks import Check, fail, ok

EXPORT_FIX = "secure-ml export --ckpt_path <run>/checkpoints/last.ckpt --output release/ and serve release/"


def integrity_check(dep: Deployment) -> Check:
    if "model" in dep.problems:
        return fail("artefact-integrity", dep.problems["model"], f"re-export the artefact from its checkpoint: {EXPORT_FIX}")
    if dep.manifest is not None:
        return ok(
            "artefact-integrity",
            f"release loads from safetensors (no pickle); weights match the manifest's SHA-256 {dep.manifest['weights']['sha256'][:12]}…",
        )
    return ok("artefact-integrity", "training checkpoint loads with torch.load(weights_only=True): no pickled code runs")


def release_check(dep: Deployment) -> Check:
    if "model" in dep.problems:
        return fail("release-artefact", "the model did not load (see artefact-integrity)", EXPORT_FIX)
    if dep.manifest is None:
        return fail(
            "release-artefact",
            f"{dep.model_path} is a training checkpoint: it carries non-private training state (history, optimizer, data fingerprint)",
            EXPORT_FIX,
        )
    return ok("release-artefact", f"{dep.model_path} is a release artefact ({dep.manifest['net']['class_path'].rpartition('.')[2]})")


def _policy(dep: Deployment):
    from secure_ml.serving.startup import build_policy

    return build_policy(dep.config.policy, dep.served.model, dep.served.stored_policy)


def policy_check(dep: Deployment) -> Check:
    if not dep.config.guard_on("policy"):
        return fail("input-policy", "the input policy is off: sponge inputs reach the model", "set policy.enabled: true")
    if "model" in dep.problems:
        return fail("input-policy", "not checked: the model did not load", EXPORT_FIX)
    try:
        policy, source = _policy(dep)
    except Exception as exc:
        return fail("input-policy", str(exc).splitlines()[0], "fix the policy source named above")
    limits = {
        k: v
        for k, v in policy.to_dict().items()
        if k in ("max_energy", "max_density", "max_layer_density", "max_layer_energy", "max_layer_positive", "max_reconstruction")
        and v is not None
    }
    held_out = source.startswith(("calibrated during training", "calibrated at start-up"))
    if not held_out or not limits:
        return fail(
            "input-policy",
            f"policy from {source}{'' if limits else ', with no activation-energy limit'}: not calibrated on non-member digits",
            "serve the release artefact, whose policy the SpongeCallback calibrated on held-out validation digits, or set "
            "policy.calibrate: true with policy.calibration_data_dir (its held-out test split is read)",
        )
    return ok("input-policy", f"{source}; limits: {', '.join(sorted(limits))}")


def false_positive_check(dep: Deployment, data_dir: Optional[str], max_fpr: float, samples: int = 2000) -> Check:
    """The policy's clean rejection rate on held-out test digits it was not calibrated on."""
    if data_dir is None:
        return Check(
            "policy-false-positives", "SKIP", "not measured", "pass --data-dir (an MNIST folder) to measure it on held-out test digits"
        )
    if "model" in dep.problems or not dep.config.guard_on("policy"):
        return fail("policy-false-positives", "not measured: no model or no policy", "see input-policy")
    from secure_ml.tools.digits import load_test_digits

    try:
        policy, source = _policy(dep)
        digits, _ = load_test_digits(data_dir, "--data-dir")
    except Exception as exc:
        return fail("policy-false-positives", str(exc).splitlines()[0], "fix the input named above")
    start = dep.config.policy.calibration_samples if source.startswith("calibrated at start-up") else 0  # not the calibration digits
    clean = digits[start : start + samples]
    if len(clean) == 0:
        return fail("policy-false-positives", "no held-out digit left to measure on", "use a data folder with more test digits")
    rate = sum(not d.allowed for d in policy.check_batch(clean, dep.served.model)) / len(clean)
    detail = f"{rate:.2%} of {len(clean)} held-out test digits rejected (limit {max_fpr:.2%})"
    if rate > max_fpr:
        return fail(
            "policy-false-positives",
            detail,
            "recalibrate the policy on more held-out digits, or raise its false_positive_rate budget knowingly",
        )
    return ok("policy-false-positives", detail)


def budget_check(dep: Deployment, max_epsilon: Optional[float], max_delta: float) -> Check:
    if "model" in dep.problems:
        return fail("privacy-budget", "not checked: the model did not load", EXPORT_FIX)
    ledger = dep.ledger or {}
    if not ledger.get("dp"):
        return fail(
            "privacy-budget",
            "the model was trained without DP: no ε bounds what it reveals about its training members",
            "train with --model.dp.enabled true",
        )
    if max_epsilon is None:
        return fail(
            "privacy-budget",
            f"ε = {float(ledger.get('epsilon') or 0.0):.3g}, but no budget is stated",
            "pass --max-epsilon, or a --gates file with a privacy/epsilon gate",
        )
    eps, delta = float(ledger.get("epsilon") or 0.0), float(ledger["delta"])  # (the loader checked both; ε null: no step yet)
    detail = f"ε = {eps:.3g} at δ = {delta:g} ({ledger.get('accountant')}, {ledger.get('steps')} steps); budget ε ≤ {max_epsilon:g}, δ ≤ {max_delta:g}"
    if eps > max_epsilon or delta > max_delta:
        return fail(
            "privacy-budget", detail, "retrain with more noise (--model.dp.noise_multiplier) or --model.dp.target_epsilon within the budget"
        )
    return ok("privacy-budget", detail)


def _served_digest(dep: Deployment) -> Optional[str]:
    """SHA-256 of the weights the service would load (release or training checkpoint); None when the model did not load."""
    from secure_ml.release.artifact import weights_sha256

    model = getattr(dep.served, "model", None)
    return weights_sha256(model) if model is not None else None


def gates_check(dep: Deployment, metrics_path: Optional[Path], gates: List[Any]) -> Check:
    from secure_ml.report.gates import check_gates

    fix = "run secure-ml test --config configs/capstone.yaml --config configs/gates.yaml --ckpt_path <the checkpoint> and pass its metrics.json as --metrics"
    if metrics_path is None:
        return fail("security-gates", "no test report given (--metrics)", fix)
    try:
        report = json.loads(Path(metrics_path).read_text())
        measured = {k: float(v) for k, v in report["test"].items()}
        recorded = [str(g["gate"]) + ": failed in the report" for g in report.get("gates", []) if not g.get("passed")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return fail("security-gates", f"{metrics_path} is not a secure-ml test report ({type(exc).__name__})", fix)
    failures = recorded + check_gates(gates, measured)
    if not gates and not report.get("gates"):
        failures.append("the report holds no gate and no --gates file was given")
    tested, served = report.get("weights_sha256"), _served_digest(dep)
    if served is not None and tested != served:  # ε alone matches every run of one recipe (same σ, q, steps)
        failures.append(
            "the report does not say which weights it measured (written before secure-ml recorded them): re-run the test"
            if tested is None
            else f"the report measured other weights (sha256 {str(tested)[:12]}…) than the artefact's ({served[:12]}…)"
        )
    eps = (dep.ledger or {}).get("epsilon")
    if eps is not None and "privacy/epsilon" in measured and not math.isclose(measured["privacy/epsilon"], float(eps), rel_tol=1e-3):
        failures.append(
            f"the report's ε {measured['privacy/epsilon']:.4g} is not the artefact's {float(eps):.4g}: it belongs to another model"
        )
    if failures:
        return fail("security-gates", "; ".join(dict.fromkeys(failures)), "fix the failing defence and re-test, or " + fix)
    n = len(gates) or len(report.get("gates", []))
    return ok("security-gates", f"{n} gate(s) pass in {metrics_path}")
