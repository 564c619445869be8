"""The LightningCLI behind ``secure-ml fit / validate / test / predict`` (imported only by those commands).

The scorecard callbacks are CLI-level keys, not entries of ``trainer.callbacks``: ``--robustness.*``,
``--membership.*``, ``--reference_mia.*``, ``--audit.*``, ``--sponge.*`` and ``--scorecard.*`` (``--scorecard.gates``). A config delta then
changes one of them without repeating (or silently dropping) the whole callback list, e.g.
``configs/gates.yaml`` holds only ``scorecard: {gates: ...}``. They run after the ``trainer.callbacks``
list, in that order, so the Scorecard sees every metric. ``--<key>.enabled false`` switches one off.
"""

import functools
import sys
import warnings
from typing import Dict, List, Optional, Set

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from secure_ml import startup_gc
from secure_ml.before_run import check_before_run
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
from secure_ml.ckpt_arg import check_ckpt_arg
from secure_ml.ckpt_hparams import reconcile, typed_model_flags
from secure_ml.cli_errors import check_config_files, check_seed, one_line_error, our_error
from secure_ml.data.datamodule import MNISTDataModule
from secure_ml.errors import ConfigError, SecureMLError, Stopped, first_line
from secure_ml.log_filter import install_advert_filter
from secure_ml.module import SecureClassifier
from secure_ml.run_checkpoints import check_trained_on, checkpoint_to_test, checkpointers, finished_message, stopped_message
from secure_ml.run_folder import FolderOnRefusal, KeepRunConfig, pin_run_folder
from secure_ml.sigterm_watch import SigtermRelay, SigtermWatch
from secure_ml.spawn_ranks import rank_errors, use_rank_launcher

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
install_advert_filter()  # Lightning's log, every Trainer start: no advert

# Training aids, also CLI keys (off by default; configs/hardened.yaml turns them on): ``--prior.*`` starts from
# a net pretrained on procedural digits, ``--ema.*`` evaluates and checkpoints a moving average of the weights.
TRAINING_CALLBACKS = {"prior": ProceduralPrior, "ema": EMACallback}

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

    * ``auto_configure_optimizers=False``: a top-level ``--optimizer`` would otherwise silently replace
      ``configure_optimizers`` and skip DP; the optimizer is ``--model.optimizer`` instead.
    * ``data.poisson_sampling`` is linked to ``model.dp.enabled``: a DP run always gets a Poisson-sampled loader.
    * the scorecard callbacks are CLI keys (see the module docstring).
    * ``secure-ml fit --test_after_fit true`` tests the fit's last checkpoint in the same process.
    * only the named subcommand's parser is built (``secure-ml fit ...`` builds ``fit``'s alone, see :meth:`subcommands`).
    """

    def __init__(self, *args, **kwargs):
        per_subcommand = set(kwargs.get("parser_kwargs") or {}) & set(LightningCLI.subcommands())  # LightningCLI splits these off
        self._named_subcommand = None if per_subcommand else named_subcommand(kwargs.get("args"), kwargs.get("run", True))
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs):
        """Lightning's parser (the main one and each subcommand's), with errors in one line (:func:`secure_ml.cli_errors.one_line_error`)."""
        parser = super().init_parser(**kwargs)
        parser.error = functools.partial(one_line_error, parser)  # a bound method would not unpickle in a ddp_spawn rank
        return parser

    def subcommands(self) -> Dict[str, Set[str]]:
        """Lightning's subcommands, or only the one the command line names first (``secure-ml fit ...``).

        LightningCLI builds a full parser per subcommand, each holding every model, data, trainer and callback option:
        about 0.3 s apiece (``python -m cProfile -m secure_ml fit --config configs/capstone.yaml --print_config``), three
        of them never used by a command that names its subcommand. Without a name (``secure-ml --help``, a typo) all four
        are built, so the help and the "invalid choice" error list them as before.
        """
        every = LightningCLI.subcommands()
        named = getattr(self, "_named_subcommand", None)
        return {named: every[named]} if named in every else every

    def parse_arguments(self, parser, args) -> None:
        """Lightning's parse, then ``--ckpt_path`` read through the safe loader before Lightning's own ``torch.load`` of it
        (which reads its hyper-parameters while parsing): a text, empty, truncated or code-carrying file is one line."""
        self._argv = list(args) if args is not None else sys.argv[1:]
        check_config_files(self._argv if isinstance(self._argv, list) else [])
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_seed((self.config.get(subcommand) or {}).get("seed_everything") if subcommand else None, "--seed_everything")
        if subcommand:
            self._ckpt_step = check_ckpt_arg(subcommand, self.config.get(subcommand, {}).get("ckpt_path"))

    def instantiate_classes(self) -> None:
        """Lightning's, with a value the classes refuse (``--trainer.max_epochs -5``, ``--model.optimizer.init_args.lr -1``)
        turned into one ConfigError instead of a traceback; our own ConfigErrors pass unchanged."""
        try:
            super().instantiate_classes()
        except SecureMLError:
            raise
        except (ValueError, MisconfigurationException) as exc:
            ours = our_error(exc)  # a class of ours refused inside jsonargparse's Union adaptation ("--model.net" is one)
            if ours is not None:
                raise ours from None
            raise ConfigError(f"the configuration was refused: {first_line(exc)}") from None

    def _parse_ckpt_path(self) -> None:
        """Lightning's (the checkpoint's hyper-parameters over the configuration), then each ``--model.*`` flag typed on the
        command line checked against them (:mod:`secure_ml.ckpt_hparams`): before, they were dropped without a word."""
        sub = self.config.get("subcommand")
        before = self.config[sub].clone() if sub else None
        super()._parse_ckpt_path()
        if before is not None:
            reconcile(before, self.config[sub], typed_model_flags(getattr(self, "_argv", [])))

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, with what it refuses only once the loaders are sized (``--trainer.limit_train_batches 0.0001``:
        a fraction of under one batch) turned into one ConfigError, as :meth:`instantiate_classes` does at build time,
        and a SIGTERM (Lightning stops at the next batch or epoch end) into one line and exit status 143. A SIGTERM
        that came where Lightning does not look stops the run at its stage's start (setup) or exits 143 once the run has
        finished (the scorecard's attacks, ``on_fit_end``): :mod:`secure_ml.sigterm_watch`."""
        startup_gc.resume()  # imports and parse done: the collector back on, their objects frozen out of its walks
        test_after_fit = subcommand == "fit" and bool(self.config.fit.get("test_after_fit"))
        check_before_run(self.trainer, self.model, subcommand, test_after_fit, self.config[subcommand].get("ckpt_path"))
        self._test_skipped, self._sigterm = False, SigtermWatch()
        use_rank_launcher(self.trainer, self._sigterm, subcommand, test_after_fit)  # ddp_spawn & co: secure_ml.spawn_ranks
        relay = next((cb for cb in self.trainer.callbacks if isinstance(cb, SigtermRelay)), None)
        if relay is None:
            relay = SigtermRelay()
            self.trainer.callbacks.append(relay)
        relay.watch = self._sigterm
        try:
            with self._sigterm, FolderOnRefusal(self.trainer), rank_errors(self._sigterm):
                super()._run_subcommand(subcommand)
        except MisconfigurationException as exc:
            raise ConfigError(f"the configuration was refused: {first_line(exc)}") from None
        except SIGTERMException:  # a SystemExit without a code: the command exited 0 as if it had finished
            raise Stopped(stopped_message(self.trainer, subcommand, test_after_fit)) from None
        if self._sigterm.came or self.trainer.received_sigterm:  # it ran to the end and would exit 0 as if none had come
            raise Stopped(finished_message(self.trainer, subcommand, self._test_skipped))

    def before_instantiate_classes(self) -> None:
        """``--trainer.default_root_dir`` also moves the default logger's folder (its ``save_dir`` "." would keep the run,
        checkpoints included, in the working directory while the flag reads as obeyed). An explicit save_dir wins; the
        save_dir a fit wrote into its config.yaml counts as explicit only until ``--trainer.default_root_dir`` is typed."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config  # run=False: no subcommand level
        trainer = config.get("trainer") if config is not None else None
        root, logger = (trainer.get("default_root_dir"), trainer.get("logger")) if trainer is not None else (None, None)
        init = getattr(logger, "init_args", None)
        if not root or init is None or logger.class_path != TRAINER_DEFAULTS["logger"]["class_path"]:
            return
        typed = [a.split("=", 1)[0] for a in getattr(self, "_argv", []) if a.startswith("--trainer.")]
        moved = "--trainer.default_root_dir" in typed and not any(a.startswith("--trainer.logger") for a in typed)
        if init.save_dir == "." or moved:  # `--config $RUN/config.yaml --trainer.default_root_dir OTHER` goes to OTHER
            init.save_dir = root

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.dp.enabled", "data.poisson_sampling")
        for key, callback in {**TRAINING_CALLBACKS, **SCORECARD_CALLBACKS}.items():
            parser.add_lightning_class_args(callback, key)
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit: then test the fit's last checkpoint in the same process (as `secure-ml test --ckpt_path` on it would, "
            "without a second start-up); the report goes into the fit's run folder. Ignored by test/validate/predict, so a "
            "fit's saved config.yaml can be reused for them",
        )

    def before_fit(self) -> None:
        pin_run_folder(self.trainer)
        if self.config.fit.get("test_after_fit") and not checkpointers(self.trainer):
            raise ConfigError(
                "--test_after_fit tests the fit's last checkpoint, but this run writes none: keep a ModelCheckpoint "
                "in --trainer.callbacks (configs/capstone.yaml writes checkpoints/last.ckpt) and --trainer.enable_checkpointing true"
            )

    def after_fit(self) -> None:
        """``--test_after_fit``: what ``secure-ml test --ckpt_path <the last checkpoint>`` would do, seeded as a new process is."""
        check_trained_on(self.trainer, self.config.fit.get("ckpt_path"), getattr(self, "_ckpt_step", None))
        if not self.config.fit.get("test_after_fit"):
            return
        if self._sigterm.came or self.trainer.received_sigterm:  # the test's own run would reset Lightning's flag and test on
            self._test_skipped = True
            return
        ckpt = checkpoint_to_test(self.trainer)
        if ckpt is None:
            raise ConfigError("--test_after_fit: the fit wrote no checkpoint to test (did it train at all?)")
        seed = self.config.fit.get("seed_everything")
        if seed is not None and seed is not False:
            seed_everything(seed, workers=True)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def named_subcommand(args, run: bool = True) -> Optional[str]:
    """The subcommand the command line names first (``args`` as LightningCLI takes them; None: ``sys.argv``), else None.

    Only a leading name counts: a later token could be an option's value (``--config fit.yaml``)."""
    if not run:
        return None
    tokens = sys.argv[1:] if args is None else args
    if not isinstance(tokens, (list, tuple)) or not tokens or not isinstance(tokens[0], str):
        return None  # a dict or Namespace of options
    return tokens[0] if tokens[0] in LightningCLI.subcommands() else None


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
            save_config_callback=KeepRunConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            parser_kwargs=parser_kwargs or {},
        )
