"""SecureClassifier: a LightningModule around a plain ``nn.Module`` with adversarial training and DP-SGD."""

import math
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any, Dict, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch import nn

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN
from secure_ml.models.registry import describe_net
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import PrivateTraining, epsilon_from_state, make_private, poisson_sample_rate, resolve_grad_sample_mode
from secure_ml.privacy.ledger import DP_STATE_KEY
from secure_ml.privacy.reference import ReferenceDPOptimizer, per_sample_gradients


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
        # The reference clipper needs the batch, not a scalar loss: it runs under manual optimization.
        self.automatic_optimization = not (dp.enabled and dp.backend == "reference")
        self.private: Optional[PrivateTraining] = None
        self._resume_dp_state: Optional[Dict[str, Any]] = None
        self.save_hyperparameters({"net": describe_net(self.net), "adversarial": asdict(adversarial), "dp": asdict(dp)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ---- steps -------------------------------------------------------------------------
    def _adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.adversarial.active:
            return None
        hooks_off = self.private.hooks_disabled() if self.private is not None else nullcontext()
        with hooks_off:  # the attack's backward must not write Opacus per-sample gradients
            return adversarial_examples(self.net, x, y, self.adversarial)

    def _common_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        x_adv = self._adversarial_batch(x, y) if stage == "train" else None
        per_sample, logits = mixed_loss(self.net, x, y, x_adv, self.adversarial.ratio)
        loss = per_sample.mean() if len(y) else per_sample.sum()  # an empty Poisson batch: 0, not NaN
        self._log_step(stage, loss, logits, y)
        return loss

    def _reference_dp_step(self, batch) -> None:
        x, y = batch
        x_adv = self._adversarial_batch(x, y)
        ratio = self.adversarial.ratio

        def sample_loss(forward, xi, yi, xai):
            loss, logits = mixed_loss(forward, xi[None], yi[None], xai[None] if x_adv is not None else None, ratio)
            return loss.sum(), logits[0]

        grads, losses, logits = per_sample_gradients(self.net, sample_loss, x, y, x_adv if x_adv is not None else x)
        opt = self.optimizers()
        opt.optimizer.set_grad_samples(list(grads.values()))
        opt.step()
        opt.zero_grad()
        if len(y):
            self._log_step("train", losses.mean(), logits, y)

    def _log_step(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        if len(y) == 0:
            return
        acc = (logits.argmax(dim=1) == y).float().mean()
        sync = self.trainer.world_size > 1  # per-rank batch means → one mean over ranks
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=sync)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=sync)

    def _ghost_dp_step(self, batch) -> None:
        """Opacus ghost clipping: per-sample norms without materialising per-sample gradients (one forward)."""
        x, y = batch
        x_adv = self._adversarial_batch(x, y)  # ratio is 0 or 1 here: one input per sample
        opt = self.optimizers()
        opt.zero_grad()
        if len(y):
            logits = self.net(x_adv if x_adv is not None else x)
            loss = self.private.criterion(logits, y)
            loss.backward()  # Opacus runs both passes: norms, then the backward of the clipped loss
        else:
            for p in self.net.parameters():  # an empty Poisson batch: a noise-only step, like the other backends
                p.grad = torch.zeros_like(p)
        opt.step()
        if len(y):
            self._log_step("train", loss.detach(), logits, y)

    def training_step(self, batch, batch_idx):
        if not self.automatic_optimization:
            return self._ghost_dp_step(batch) if self.private.ghost else self._reference_dp_step(batch)
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._common_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._common_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.net(x), dim=1)

    # ---- optimisation and DP -----------------------------------------------------------
    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
        optimizer = factory(self.net.parameters())
        if self.dp.enabled:
            self._check_trainer_for_dp()
            estimated = self.trainer.estimated_stepping_batches  # also makes Lightning load the train loader
            total_steps = int(estimated) if math.isfinite(estimated) else 0  # 0: unbounded (max_epochs -1)
            if self.trainer.train_dataloader is None:  # unbounded runs return before loading it
                self.trainer.fit_loop.setup_data()
            if self.private is not None:
                self.private.close()
            loader = self.trainer.train_dataloader
            distributed = self.trainer.world_size > 1
            if distributed:
                self._check_distributed_dp(loader)
            module = self.trainer.strategy.model if distributed else None  # the DDP wrapper → Opacus's distributed optimizer
            single_forward = not self.adversarial.active or self.adversarial.ratio == 1.0
            mode = resolve_grad_sample_mode(self.dp, single_forward, distributed)
            self.private = make_private(
                self.net, optimizer, loader, self.dp, total_steps, self._resume_dp_state, module=module, grad_sample_mode=mode
            )
            optimizer = self.private.optimizer
            # Ghost clipping and the reference clipper need the batch itself, not a scalar loss: manual optimization.
            self.automatic_optimization = not (self.private.ghost or self.dp.backend == "reference")
        if self.scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
        return optimizer

    def _check_trainer_for_dp(self) -> None:
        trainer = self.trainer
        if trainer.gradient_clip_val:
            raise ConfigError(
                "--trainer.gradient_clip_val clips the raw, non-private gradient; with DP the clipping is --model.dp.max_grad_norm. Remove it"
            )
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                "--trainer.accumulate_grad_batches > 1 breaks Poisson sampling's privacy accounting; use a larger --data.batch_size"
            )

    def _check_distributed_dp(self, loader) -> None:
        if self.dp.backend != "opacus":
            raise ConfigError("--model.dp.backend reference runs in one process; use --model.dp.backend opacus with --trainer.devices > 1")
        if not isinstance(getattr(loader, "batch_sampler", None), DistributedUniformWithReplacementSampler):
            raise ConfigError(
                "DP under several processes needs each rank's own Poisson sampler; set --trainer.use_distributed_sampler false "
                "(the secure-ml CLI's default) so Lightning does not replace it"
            )
        if not isinstance(self.trainer.strategy.model, torch.nn.parallel.DistributedDataParallel):
            raise ConfigError("DP with several devices is supported with --trainer.strategy ddp (DistributedDataParallel)")

    def on_train_start(self) -> None:
        if not self.dp.enabled:
            return
        expected = DPOptimizer if self.dp.backend == "opacus" else ReferenceDPOptimizer
        if self.trainer.world_size > 1:
            expected = DistributedDPOptimizer  # all-reduces the clipped, noised gradient (noise added once)
        optimizers = self.trainer.optimizers
        if self.private is None or len(optimizers) != 1 or not isinstance(optimizers[0], expected):
            found = ", ".join(type(o).__name__ for o in optimizers) or "none"
            raise ConfigError(
                f"--model.dp.enabled is true but training would use {found}, not a {expected.__name__}: the run would not be private. "
                "Set the optimizer with --model.optimizer, not a top-level --optimizer"
            )
        poisson_sample_rate(self.trainer.train_dataloader)

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.scheduler_factory is not None:
            self.lr_schedulers().step()  # manual optimization (reference DP backend): Lightning leaves schedulers to us
        sync = self.trainer.world_size > 1  # the values below are identical on every rank; syncing only silences Lightning
        if self.private is not None:
            eps = self.private.epsilon(self.dp.delta)
            if eps is not None:
                self.log("privacy/epsilon", eps, sync_dist=sync)
            self.log("privacy/noise_multiplier", self.private.noise_multiplier, sync_dist=sync)
        report = getattr(self.trainer.datamodule, "sanitization_report", None) if self.trainer.datamodule is not None else None
        poisoned = getattr(self.trainer.datamodule, "poisoned_indices", None) if report is not None else None
        if report is not None and poisoned is not None:
            self.log_dict({"poison/precision": report.precision, "poison/recall": report.recall, "poison/f1": report.f1}, sync_dist=sync)

    def on_test_epoch_end(self) -> None:
        # The accountant's ε of the checkpoint under test, so the scorecard reports it next to the attacks.
        state = self.private.state_dict() if self.private is not None else self._resume_dp_state
        eps = epsilon_from_state(state, self.dp.delta) if state is not None else None
        if eps is not None:
            self.log("privacy/epsilon", eps, sync_dist=self.trainer.world_size > 1)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.private is not None:
            checkpoint[DP_STATE_KEY] = self.private.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._resume_dp_state = checkpoint.get(DP_STATE_KEY)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if fitting and self.dp.enabled and self._resume_dp_state is None:
            raise ConfigError(
                "--ckpt_path holds no privacy-accountant state (it was not trained with DP, or by an older version); "
                "resuming it with --model.dp.enabled would report a wrong ε. Start a fresh DP run instead"
            )

    def teardown(self, stage: str) -> None:
        if self.private is not None and stage == "fit":
            self.private.close()
