"""``secure-ml``: a LightningCLI (fit / validate / test / predict) over SecureClassifier and MNISTDataModule."""

import sys
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI

from secure_ml.data.datamodule import MNISTDataModule
from secure_ml.errors import SecureMLError
from secure_ml.module import SecureClassifier

TRAINER_DEFAULTS = {
    # Attacks in evaluation callbacks need gradients; inference_mode would forbid them.
    "inference_mode": False,
    # The datamodule shards data itself (a per-rank Poisson sampler under DP); Lightning must not replace it.
    "use_distributed_sampler": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


class SecureMLCLI(LightningCLI):
    """LightningCLI with the DP wiring made impossible to bypass.

    * ``auto_configure_optimizers=False``: a top-level ``--optimizer`` would otherwise
      silently replace ``configure_optimizers`` and skip DP; the optimizer is
      ``--model.optimizer`` instead.
    * ``data.poisson_sampling`` is linked to ``model.dp.enabled``: a DP run always gets a
      Poisson-sampled loader, and the flag cannot be set against it.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.dp.enabled", "data.poisson_sampling")


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> SecureMLCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line."""
    return SecureMLCLI(
        SecureClassifier,
        MNISTDataModule,
        auto_configure_optimizers=False,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


EXTRA_COMMANDS = {
    # name: (module, function taking argv and returning an exit status)
    "serve": ("secure_ml.serving.cli", "serve_main"),
    "extract": ("secure_ml.serving.cli", "extract_main"),
}


def main(args: Optional[List[str]] = None) -> None:
    """Console entry point: our errors become one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            import importlib

            module, func = EXTRA_COMMANDS[argv[0]]
            raise SystemExit(getattr(importlib.import_module(module), func)(argv[1:]))
        cli_main(args)
    except SecureMLError as exc:
        print(f"secure-ml: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
