"""The LightningCLI behind ``secure-ml fit / validate / test / predict`` (imported only by those commands).

The scorecard callbacks are CLI-level keys, not entries of ``trainer.callbacks``: ``--robustness.*``,
``--membership.*``, ``--reference_mia.*``, ``--audit.*``, ``--sponge.*`` and ``--scorecard.*`` (``--scorecard.gates``). A config delta then
changes one of them without repeating (or silently dropping) the whole callback list, e.g.
``configs/gates.yaml`` holds only ``scorecard: {gates: ...}``. They run after the ``trainer.callbacks``
list, in that order, so the Scorecard sees every metric. ``--<key>.enabled false`` switches one off.
"""

import logging
import warnings
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI

from secure_ml.callbacks import (
    MembershipInferenceCallback,
    OneRunAuditCallback,
    ReferenceMIACallback,
    RobustnessCallback,
    Scorecard,
    SpongeCallback,
)
from secure_ml.callbacks.ema import EMACallback
from secure_ml.callbacks.prior import ProceduralPrior
from secure_ml.data.datamodule import MNISTDataModule
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


class DropAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger ... Lightning Experiments platform" line, printed on every Trainer start:
    an advert for a cloud service is noise in a tool whose runs hold private (medical) data."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


_RANK_ZERO_LOG = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info writes
if not any(isinstance(f, DropAdverts) for f in _RANK_ZERO_LOG.filters):
    _RANK_ZERO_LOG.addFilter(DropAdverts())

# Training aids, also CLI keys (off by default; configs/hardened.yaml turns them on): ``--prior.*`` starts from
# a net pretrained on procedural digits, ``--ema.*`` evaluates and checkpoints a moving average of the weights.
TRAINING_CALLBACKS = {
    "prior": ProceduralPrior,
    "ema": EMACallback,
}

# CLI key → callback class, in the order they run (the Scorecard last: it reads the others' metrics).
SCORECARD_CALLBACKS = {
    "robustness": RobustnessCallback,
    "membership": MembershipInferenceCallback,
    "reference_mia": ReferenceMIACallback,
    "audit": OneRunAuditCallback,
    "sponge": SpongeCallback,
    "scorecard": Scorecard,
}


class SecureMLCLI(LightningCLI):
    """LightningCLI with the DP wiring made impossible to bypass.

    * ``auto_configure_optimizers=False``: a top-level ``--optimizer`` would otherwise
      silently replace ``configure_optimizers`` and skip DP; the optimizer is
      ``--model.optimizer`` instead.
    * ``data.poisson_sampling`` is linked to ``model.dp.enabled``: a DP run always gets a
      Poisson-sampled loader, and the flag cannot be set against it.
    * the scorecard callbacks are CLI keys (see the module docstring).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.dp.enabled", "data.poisson_sampling")
        for key, callback in {**TRAINING_CALLBACKS, **SCORECARD_CALLBACKS}.items():
            parser.add_lightning_class_args(callback, key)


def cli_main(
    args: Optional[List[str]] = None, run: bool = True, cli_class: Optional[type] = None, parser_kwargs: Optional[dict] = None
) -> SecureMLCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line (None: ``sys.argv``); ``cli_class`` a subclass
    of SecureMLCLI (the sweep's); ``parser_kwargs`` LightningCLI's (e.g. ``exit_on_error``)."""
    with warnings.catch_warnings():
        # Explicit args from Python are the intent, whatever the host process's sys.argv holds.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        # Lightning's own _pytree.py against torch >= 2.10, printed with its path on every fit; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        return (cli_class or SecureMLCLI)(
            SecureClassifier,
            MNISTDataModule,
            auto_configure_optimizers=False,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            parser_kwargs=parser_kwargs or {},
        )
