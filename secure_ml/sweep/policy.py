"""Exercise 4: evaluation-only sweep of the input policy's thresholds (no retraining per point).

One model is trained once (``<out>/model/``, reused on resume; or ``policy.checkpoint``). Each point
builds an :class:`~secure_ml.defenses.input_policy.InputPolicy` with one check (each ``max_<check>``
limit the policy has: ``variance``, ``energy``, ``density``, ...) or ``all`` of them (the deployed
policy), either calibrated on the clean validation digits at a target false-positive rate
(``policy.false_positive_rate``; the pixel-variance limit is that quantile of the clean variances,
computed here) or with an explicit limit
(``policy.threshold``: e.g. the seed's variance threshold), and measures on non-members it was not
calibrated on: the share of clean test digits rejected (``sponge/false_positive_rate``, ≥ 2,000 with
the capstone's test split) and of sponges rejected: crafted by gradient ascent on the activation
energy from noise and from digits (``sponge/reject_rate_crafted``), and the seed's Gaussian noise
clipped to [0, 1] so it passes the range check (``sponge/reject_rate_gaussian``). Those points are
the ROC of the defence. Only the public functions ``InputPolicy.calibrate``/``check_batch``,
``craft_sponges``, ``gaussian_sponges`` and ``activation_energy`` are used.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from secure_ml.errors import ConfigError
from secure_ml.sweep.options import cli_args, config_args
from secure_ml.sweep.runner import PointResult, _last_checkpoint, one_line, output_to

KEYS = ("policy.check", "policy.false_positive_rate", "policy.threshold")


def checks() -> Dict[str, str]:
    """``{check: InputPolicy field}`` for every limit the policy has (``variance``, ``energy``, ``density``, ...)."""
    from dataclasses import fields

    from secure_ml.defenses.input_policy import InputPolicy

    skip = {"max_value", "max_reconstruction"}  # the reconstruction check needs an autoencoder the sweep does not train
    return {f.name[len("max_") :]: f.name for f in fields(InputPolicy) if f.name.startswith("max_") and f.name not in skip}


@dataclass
class PolicySettings:
    """The sweep file's ``policy:`` section.

    Args:
        checkpoint: evaluate this ``secure-ml fit`` checkpoint instead of training one from the base configs.
        crafted: sponges crafted from uniform noise, and as many from clean digits.
        gaussian: the seed's Gaussian sponges per scale (clipped to [0, 1]).
        gaussian_scales: their standard deviations.
        steps: gradient-ascent steps of the crafted sponges.
        lr: step of the ascent (per pixel for ``sign``, Adam's step size for ``adam``).
        variants: ``[optimizer, objective]`` pairs the crafted sponges cycle through (sponge *i* uses variant *i* mod n):
            ``sign``/``adam`` × ``l2`` (activation energy) / ``l0`` (activation density), like the SpongeCallback.
        operating_point: label of the point that is the deployed configuration (marked in the figure).
    """

    checkpoint: Optional[str] = None
    crafted: int = 100
    gaussian: int = 25
    gaussian_scales: tuple = (0.5, 1.0, 2.0, 5.0)
    steps: int = 20
    lr: float = 0.01
    variants: tuple = (("sign", "l2"), ("sign", "l0"), ("adam", "l2"), ("adam", "l0"))
    operating_point: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("crafted", "gaussian", "steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"policy.{name} must be an integer >= 1; got {getattr(self, name)!r}")
        pairs = [tuple(v) for v in self.variants] if isinstance(self.variants, (list, tuple)) else []
        if not pairs or any(len(v) != 2 or v[0] not in ("sign", "adam") or v[1] not in ("l2", "l0") for v in pairs):
            raise ConfigError(f"policy.variants must be a list of [sign|adam, l2|l0] pairs; got {self.variants!r}")
        self.variants = tuple(pairs)
        self.gaussian_scales = tuple(float(s) for s in self.gaussian_scales)


def settings(raw: Mapping[str, Any]) -> PolicySettings:
    unknown = set(raw) - set(PolicySettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"policy has unknown key '{sorted(unknown)[0]}' (known: {', '.join(PolicySettings.__dataclass_fields__)})")
    return PolicySettings(**raw)


def check_point(label: str, overrides: Mapping[str, Any], where: str) -> None:
    """ConfigError naming the key when a policy point is malformed."""
    policy_keys = {k: v for k, v in overrides.items() if k.startswith("policy.")}
    for key in policy_keys:
        if key not in KEYS:
            raise ConfigError(f"{where}: point '{label}': '{key}' is not a policy sweep key (known: {', '.join(KEYS)})")
    check, known = policy_keys.get("policy.check"), checks()
    if check not in (*known, "all"):
        raise ConfigError(f"{where}: point '{label}': policy.check must be one of {', '.join(known)}, all; got {check!r}")
    fpr, threshold = policy_keys.get("policy.false_positive_rate"), policy_keys.get("policy.threshold")
    if (fpr is None) == (threshold is None):
        raise ConfigError(f"{where}: point '{label}': give exactly one of policy.false_positive_rate and policy.threshold")
    if fpr is not None and not (isinstance(fpr, (int, float)) and 0 < fpr < 1):
        raise ConfigError(f"{where}: point '{label}': policy.false_positive_rate must be in (0, 1); got {fpr!r}")
    if threshold is not None and (check in ("all", "layer_density") or not isinstance(threshold, (int, float)) or threshold <= 0):
        raise ConfigError(f"{where}: point '{label}': policy.threshold must be a positive limit for a single check; got {threshold!r}")


def train_model(bases, overrides: Mapping[str, Any], out_dir: Path) -> Path:
    """The sweep's one model: ``<out>/model/lightning_logs/fit/checkpoints/last.ckpt``, trained now unless a finished one exists.

    ``<out>/model/done`` marks a finished fit; a fit that was interrupted is started afresh.
    """
    from secure_ml.sweep.runner import FIT_ONLY, QUIET, _run_args, build_cli

    run_dir = out_dir / "model"
    log_dir = run_dir / "lightning_logs" / "fit"
    if (run_dir / "done").is_file():
        return _last_checkpoint(log_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        with output_to(run_dir / "log.txt"):
            cli = build_cli([*config_args(bases), *cli_args({**overrides, **QUIET, **FIT_ONLY, **_run_args(run_dir, "fit")})])
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except Exception as exc:
        raise ConfigError(f"training the policy sweep's model failed: {one_line(exc)} (see {run_dir / 'log.txt'})") from None
    ckpt = _last_checkpoint(log_dir)
    (run_dir / "done").write_text(str(ckpt) + "\n")
    return ckpt


class PolicyEvaluator:
    """Holds the model, the clean non-member digits and each repeat's sponges; evaluates one policy point."""

    def __init__(self, bases, overrides: Mapping[str, Any], checkpoint: Path, cfg: PolicySettings):
        import torch

        from secure_ml.sweep.runner import build_cli

        cli = build_cli([*config_args(bases), *cli_args(dict(overrides))])
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)["state_dict"]
        self.net = cli.model.net
        self.net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
        self.net.eval()
        dm = cli.datamodule
        dm.setup("test")
        self.calib = dm.val_dataset.tensors[0]  # non-members the limits are calibrated on
        self.measure = dm.test_dataset.tensors[0]  # non-members the false-positive rate is measured on
        self.cfg = cfg
        self._sponges: Dict[int, Dict[str, Any]] = {}

    def sponges(self, seed: int) -> Dict[str, Any]:
        import torch

        from secure_ml.attacks.sponge import craft_sponges, gaussian_sponges

        if seed not in self._sponges:
            cfg, gen = self.cfg, torch.Generator().manual_seed(seed)
            digits = self.calib[torch.randperm(len(self.calib), generator=gen)[: cfg.crafted]]
            starts = torch.cat([torch.rand((cfg.crafted, *self.calib.shape[1:]), generator=gen), digits])
            variants = [cfg.variants[i % len(cfg.variants)] for i in range(len(starts))]
            crafted = craft_sponges(
                self.net,
                starts,
                steps=cfg.steps,
                lr=cfg.lr,
                optimizer=[v[0] for v in variants],
                objective=[v[1] for v in variants],
                clamp=True,
            )
            gaussian = gaussian_sponges(cfg.gaussian, list(cfg.gaussian_scales), gen, shape=tuple(self.calib.shape[1:]), clamp=True)
            self._sponges[seed] = {"crafted": crafted, "gaussian": gaussian}
        return self._sponges[seed]

    def policy(self, overrides: Mapping[str, Any]):
        """The point's policy: an explicit limit, the pixel-variance quantile, or ``InputPolicy.calibrate`` with the other limits off."""
        import torch

        from secure_ml.defenses.input_policy import InputPolicy

        check, fields = overrides["policy.check"], checks()
        off = {name: None for name in fields.values()}
        if "policy.threshold" in overrides:
            return InputPolicy(**{**off, fields[check]: float(overrides["policy.threshold"])})
        fpr = float(overrides["policy.false_positive_rate"])
        if check == "variance":  # a fixed pixel statistic: its limit is the (k+1)-th largest clean variance, k = ⌊fpr·N⌋
            variances = self.calib.flatten(1).double().var(1, correction=0)
            k = min(int(fpr * len(variances)), len(variances) - 1)
            return InputPolicy(**{**off, "max_variance": float(torch.sort(variances, descending=True).values[k])})
        if check == "all":
            return InputPolicy.calibrate(self.net, self.calib, false_positive_rate=fpr)
        others_off = {n: None for c, n in fields.items() if c != check}
        return InputPolicy.calibrate(self.net, self.calib, false_positive_rate=fpr, checks=(check,), **others_off)

    def evaluate(self, overrides: Mapping[str, Any], seed: int) -> PointResult:
        result = PointResult()
        start = time.perf_counter()
        try:
            sponges = self.sponges(seed)
            policy = self.policy(overrides)

            def rejected(x) -> float:
                return sum(not d.allowed for d in policy.check_batch(x, self.net)) / len(x)

            crafted, gaussian = rejected(sponges["crafted"]), rejected(sponges["gaussian"])
            n_c, n_g = len(sponges["crafted"]), len(sponges["gaussian"])
            result.metrics = {
                "sponge/false_positive_rate": rejected(self.measure),
                "sponge/reject_rate_crafted": crafted,
                "sponge/reject_rate_gaussian": gaussian,
                "sponge/reject_rate": (crafted * n_c + gaussian * n_g) / (n_c + n_g),
            }
            limits = {k: v for k, v in policy.to_dict().items() if k in checks().values() and isinstance(v, (int, float))}
            result.extra = {"limit." + k: v for k, v in limits.items()} | {"clean_digits": len(self.measure), "sponges": n_c + n_g}
        except Exception as exc:
            result.error = one_line(exc)
        result.wall_s = time.perf_counter() - start
        return result


def policy_overrides(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in overrides.items() if k.startswith("policy.")}


def training_overrides(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in overrides.items() if not k.startswith("policy.")}


def point_keys(points: List[Any]) -> List[str]:
    return sorted({k for p in points for k in p.overrides if k.startswith("policy.")})
