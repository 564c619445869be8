"""SecureClassifier: a LightningModule around a plain ``nn.Module`` with adversarial training and DP-SGD.

With DP on, the step mode (``bk``, ``ghost``, ``hooks``, ``reference``; see :mod:`secure_ml.privacy.modes`)
is resolved once in ``configure_optimizers`` and every training step is
:func:`secure_ml.privacy.steps.dp_step` under manual optimization; without DP, Lightning's
automatic optimization runs the plain (optionally adversarial) loss.
"""

import math
from dataclasses import asdict
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.callbacks.selection import SelectionRefresh
from secure_ml.checkpoint_io import install_safe_checkpoint_io
from secure_ml.errors import ConfigError
from secure_ml.fit_checks import check_distributed_dp, check_trainer_for_dp, check_training_start
from secure_ml.models import SmallCNN
from secure_ml.models.probe import NUM_CLASSES, check_net_output, digit_shape
from secure_ml.models.registry import describe_net
from secure_ml.optim_build import build_optimizer, build_scheduler
from secure_ml.optim_resume import OPTIMIZER_KEY, SCHEDULER_KEY, check_resumed, optimizer_name, scheduler_name
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import PrivateTraining, check_model, make_private
from secure_ml.privacy.ledger import DP_STATE_KEY
from secure_ml.privacy.modes import resolve_mode
from secure_ml.privacy.private import epsilon_from_state
from secure_ml.privacy.steps import dp_step
from secure_ml.report.gates import SAME_ON_EVERY_RANK, as_metric
from secure_ml.schedulers import lightning_config, lightning_steps, step_epoch
from secure_ml.weight_checks import check_step_finite, check_weights_finite, raise_if_other_net


class SecureClassifier(LightningModule):
    """Trains ``net`` with optional FGSM/PGD adversarial examples and DP-SGD.

    Args:
        net: the classifier, a plain ``nn.Module`` taking pixel-space images in [0, 1] (Opacus hooks only this); default SmallCNN.
        optimizer: optimizer factory over the net's parameters; default SGD(lr=0.01, momentum=0.9), the seed's.
        scheduler: optional LR-scheduler factory (built on the DP optimizer when DP is on).
        adversarial: adversarial-training settings.
        dp: DP-SGD settings.
    """

    def __init__(
        self,
        net: Optional[nn.Module] = None,
        optimizer: Optional[OptimizerCallable] = None,
        scheduler: Optional[LRSchedulerCallable] = None,
        adversarial: AdversarialConfig = AdversarialConfig(),
        dp: DPConfig = DPConfig(),
    ):
        super().__init__()
        self.net = net if net is not None else SmallCNN()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.adversarial = adversarial
        self.dp = dp
        self.private: Optional[PrivateTraining] = None  # set by configure_optimizers when DP is on
        self._loaded_dp_state: Optional[Dict[str, Any]] = None  # the accountant state of weights loaded from a checkpoint
        self._resumed_optimizer: Optional[tuple] = None  # a resumed checkpoint's optimizer and scheduler states and class names
        self._validated = False  # validation ran in this training epoch (a plateau schedule steps only then)
        self.save_hyperparameters({"net": describe_net(self.net), "adversarial": asdict(adversarial), "dp": asdict(dp)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ---- steps -------------------------------------------------------------------------
    def _log_step(self, stage: str, loss: Optional[torch.Tensor], logits: Optional[torch.Tensor], y: torch.Tensor) -> None:
        if loss is None or len(y) == 0:
            return
        acc = (logits.argmax(dim=1) == y).float().mean()
        sync = self.trainer.world_size > 1  # per-rank batch means → one mean over ranks
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=sync)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=sync)

    def _eval_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self._log_step(stage, loss, logits, y)
        return loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.private is not None:  # DP: every mode drives its own optimizer step (manual optimization)
            result = dp_step(self.private, self.net, self.optimizers(), x, y, self.adversarial)
            if result is not None:
                self._log_step("train", result.loss, result.logits, y)
            return None
        x_adv = adversarial_examples(self.net, x, y, self.adversarial) if self.adversarial.active else None
        per_sample, logits = mixed_loss(self.net, x, y, x_adv, self.adversarial.ratio)
        loss = per_sample.mean()
        self._log_step("train", loss, logits, y)
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.net(x), dim=1)

    # ---- optimisation and DP -----------------------------------------------------------
    def setup(self, stage: str) -> None:
        install_safe_checkpoint_io(self.trainer.strategy)  # --ckpt_path never unpickles code (runs before Lightning restores it)
        if self.dp.enabled and stage == "fit":
            check_model(self.net)  # Opacus's layer rules first: their message says what to change (BatchNorm → GroupNorm)
        check_net_output(self.net, digit_shape(self.trainer.datamodule), NUM_CLASSES)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Lightning's restore of ``--ckpt_path``; weights of another net are one ConfigError, not torch's key listing."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as exc:
            raise_if_other_net(exc, self.net)
            raise

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, self.net.parameters(), self.dp.enabled)
        if self.dp.enabled:
            optimizer = self._make_private(optimizer).optimizer
        else:  # trained on without DP: a loaded checkpoint's ε no longer describes these weights
            self._loaded_dp_state = None
        # The one place this is decided: every DP mode takes its own optimizer step (dp_step).
        self.automatic_optimization = self.private is None
        epochs = self._trainer.max_epochs if self._trainer is not None else None
        scheduler = build_scheduler(self.scheduler_factory, optimizer, self.optimizer_factory, epochs)
        resumed, self._resumed_optimizer = self._resumed_optimizer, None
        check_resumed(resumed, optimizer, scheduler)  # Lightning restores these next: refuse what it cannot, or would overwrite
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": lightning_config(scheduler, self._trainer)}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if lightning_steps(scheduler):  # a plateau schedule was stepped in on_train_epoch_end
            super().lr_scheduler_step(scheduler, metric)

    def _make_private(self, optimizer: torch.optim.Optimizer) -> PrivateTraining:
        """Resolve the DP mode once and wrap ``optimizer``; the accountant continues from the weights' own history."""
        check_trainer_for_dp(self.trainer)
        estimated = self.trainer.estimated_stepping_batches  # also makes Lightning load the train loader
        total_steps = int(estimated) if math.isfinite(estimated) else 0  # 0: unbounded (max_epochs -1)
        if self.trainer.train_dataloader is None:  # unbounded runs return before loading it
            self.trainer.fit_loop.setup_data()
        state = self.dp_state()  # a loaded checkpoint's, or this module's previous fit's: never restart the accountant
        if self.private is not None:
            self.private.close()
        loader = self.trainer.train_dataloader
        distributed = self.trainer.world_size > 1
        if distributed:
            check_distributed_dp(self.trainer, loader)
        mixed = self.adversarial.active and 0 < self.adversarial.ratio < 1
        mode = resolve_mode(self.dp, mixed=mixed, distributed=distributed, net=self.net)
        module = self.trainer.strategy.model if distributed else None  # the DDP wrapper → clipped sums all-reduced, noise once
        self.private = make_private(self.net, optimizer, loader, self.dp, total_steps, state, module=module, mode=mode)
        self._loaded_dp_state = None
        return self.private

    def dp_state(self) -> Optional[Dict[str, Any]]:
        """The accountant state of the current weights: the live run's, else the loaded checkpoint's; None without DP."""
        return self.private.state_dict() if self.private is not None else self._loaded_dp_state

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Stop at the first step that leaves a weight NaN or infinite: before validation, the scorecard or a checkpoint sees it."""
        check_step_finite(self.net, self.trainer, self.current_epoch)

    def _check_finite_weights(self) -> None:
        check_weights_finite(self.net, bool(self.trainer.ckpt_path))

    # Evaluating NaN weights would crash the scorecard's attacks with a traceback: one sentence instead.
    on_validation_start = on_test_start = on_predict_start = _check_finite_weights

    def on_validation_epoch_end(self) -> None:
        self._validated = self._validated or not self.trainer.sanity_checking

    def on_train_start(self) -> None:
        self._check_finite_weights()  # a resumed checkpoint of a diverged run
        check_training_start(self.trainer, self.dp.enabled, self.private)

    def on_train_batch_start(self, batch, batch_idx) -> Optional[int]:
        # The privacy budget is spent (dp_step would refuse anyway): skip the rest of the epoch without reading the batches.
        return -1 if self.private is not None and self.private.exhausted else None

    def on_train_epoch_end(self) -> None:
        if self.scheduler_factory is not None:  # before the epoch's checkpoints (secure_ml.schedulers)
            step_epoch(self.lr_schedulers(), self.trainer.callback_metrics, self._validated, not self.automatic_optimization)
        self._validated = False
        sync = self.trainer.world_size > 1  # the values below are identical on every rank; syncing only silences Lightning
        if self.private is not None:
            eps = self.private.epsilon(self.dp.delta)
            if eps is not None:
                self.log("privacy/epsilon", as_metric(eps, self.device), sync_dist=sync, reduce_fx=SAME_ON_EVERY_RANK, batch_size=1)
            sigma = as_metric(self.private.noise_multiplier, self.device)
            self.log("privacy/noise_multiplier", sigma, sync_dist=sync, reduce_fx=SAME_ON_EVERY_RANK, batch_size=1)
        report = getattr(self.trainer.datamodule, "sanitization_report", None) if self.trainer.datamodule is not None else None
        poisoned = getattr(self.trainer.datamodule, "poisoned_indices", None) if report is not None else None
        if report is not None and poisoned is not None:
            scores = {"poison/precision": report.precision, "poison/recall": report.recall, "poison/f1": report.f1}
            scores = {k: as_metric(v, self.device) for k, v in scores.items()}
            self.log_dict(scores, sync_dist=sync, reduce_fx=SAME_ON_EVERY_RANK, batch_size=1)

    def configure_callbacks(self):
        """Files a monitored ModelCheckpoint keeps were chosen by comparing every model so far: their ε must cover all
        those steps, also when the fit is stopped (:class:`~secure_ml.callbacks.selection.SelectionRefresh`)."""
        return [SelectionRefresh()]

    def on_test_epoch_end(self) -> None:
        # ε of the checkpoint under test over its selection steps, so the scorecard and the gates report what a release costs.
        state = self.dp_state()
        eps = epsilon_from_state(state, self.dp.delta) if state is not None else None
        if eps is not None:
            sync = self.trainer.world_size > 1
            self.log("privacy/epsilon", as_metric(eps, self.device), sync_dist=sync, reduce_fx=SAME_ON_EVERY_RANK, batch_size=1)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.optimizers:
            checkpoint[OPTIMIZER_KEY] = optimizer_name(self.trainer.optimizers[0])
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            checkpoint[SCHEDULER_KEY] = scheduler_name(self.trainer.lr_scheduler_configs[0].scheduler)
        if self.private is not None:
            checkpoint[DP_STATE_KEY] = self.private.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._loaded_dp_state = checkpoint.get(DP_STATE_KEY)
        if self.private is not None:  # the loaded weights replace the live run's: their own accountant state counts now
            self.private.close()
            self.private = None
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if fitting:
            keys = ("optimizer_states", OPTIMIZER_KEY, "lr_schedulers", SCHEDULER_KEY)
            self._resumed_optimizer = tuple(checkpoint.get(key) for key in keys)
        if fitting and self.dp.enabled and self._loaded_dp_state is None:
            raise ConfigError(
                "--ckpt_path holds no privacy-accountant state (it was not trained with DP, or by an older version); "
                "resuming it with --model.dp.enabled would report a wrong ε. Start a fresh DP run instead"
            )

    def teardown(self, stage: str) -> None:
        if self.private is not None and stage == "fit":
            self.private.close()
