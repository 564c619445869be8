"""``secure-ml export --ckpt_path CKPT --output DIR``: the release artifact of a training checkpoint."""

import sys
from pathlib import Path
from typing import List

from secure_ml.errors import ConfigError
from secure_ml.release.artifact import Release, write_release
from secure_ml.release.checkpoint import build_model, net_description, net_state, read_checkpoint, stored_policy
from secure_ml.tools.args import OneLineParser


def export_checkpoint(ckpt_path: str, out_dir: str, allow_non_dp: bool = False) -> Release:
    """Weights, net description, input policy and privacy ledger of ``ckpt_path``, written to ``out_dir``."""
    from secure_ml.privacy.ledger import ledger_from_checkpoint  # the one place ε is computed (selection included)

    path = Path(ckpt_path).expanduser()
    ckpt = read_checkpoint(path)
    model = build_model(net_description(ckpt), net_state(ckpt, path), f"--ckpt_path: '{path}'")
    ledger = ledger_from_checkpoint(ckpt)
    if ledger is None and not allow_non_dp:
        raise ConfigError(
            f"--ckpt_path: '{path}' was trained without DP: its weights are computed from the training members without any "
            "privacy guarantee. Train with --model.dp.enabled true, or pass --allow_non_dp to export it marked dp: false"
        )
    try:
        return write_release(Path(out_dir).expanduser(), model, stored_policy(ckpt), ledger or {"dp": False})
    except ValueError as exc:  # a non-finite ε, an invalid stored policy
        raise ConfigError(f"--ckpt_path: '{path}' cannot be released ({exc})") from None


def _parser() -> OneLineParser:
    p = OneLineParser(prog="secure-ml export", description="Write the release artifact of a `secure-ml fit` checkpoint.")
    p.add_argument("--ckpt_path", "--ckpt-path", required=True, help="checkpoint written by `secure-ml fit`")
    p.add_argument("--output", required=True, help="new (or empty) directory for weights.safetensors and manifest.json")
    p.add_argument("--allow_non_dp", "--allow-non-dp", action="store_true", help="export a model trained without DP (marked dp: false)")
    return p


def export_main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    release = export_checkpoint(args.ckpt_path, args.output, args.allow_non_dp)
    m = release.manifest
    privacy = m["privacy"]
    spent = "NO differential privacy"
    if privacy.get("dp"):  # ε counts every step that influenced the choice of this file, not only those that trained it
        trained, counted = privacy["steps"], privacy.get("selection_steps", privacy["steps"])
        steps = f"{counted} steps" if counted == trained else f"{counted} steps counted for checkpoint selection, {trained} trained"
        spent = f"ε = {privacy['epsilon']:.3g} at δ = {privacy['delta']:g} ({privacy['accountant']}, {steps})"
    print(
        f"secure-ml export: wrote {args.output} ({m['net']['class_path'].rpartition('.')[2]}, {spent}, input policy "
        f"{'included' if m['input_policy'] else 'none'}; manifest sha256 {release.manifest_sha256})",
        file=sys.stderr,
    )
    return 0
