"""Start training from a data-independent prior: the net pretrained on procedural digits (see secure_ml.models.prior)."""

from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from secure_ml.errors import TORCH_SEED_MAX, check_seed
from secure_ml.models.prior import PriorConfig, load_or_pretrain


class ProceduralPrior(Callback):
    """Before ``fit`` builds its (DP) optimizer, replace the net's initial weights by the procedural prior.

    The prior is computed once per (net, initial weights, settings) and cached in ``cache_dir``; a resumed
    run (``--ckpt_path``) keeps its checkpoint's weights. Under several processes rank 0 computes it and the
    others load it from the cache. The prior alone (no private data) is scored on the validation split.

    Args:
        enabled: off by default; ``prior: {enabled: true}`` in a config turns it on.
        digits: procedural digits drawn.
        epochs: pretraining epochs.
        batch_size: pretraining batch size.
        lr: peak Adam learning rate (one-cycle schedule).
        adv_epsilon: L∞ radius of PGD adversarial pretraining (pixels); 0 for clean pretraining.
        adv_steps: PGD iterations.
        max_shift: random translation in pixels.
        seed: pretraining seed (public: no private data is involved).
        cache_dir: where priors are cached; null recomputes every run.
    """

    def __init__(
        self,
        enabled: bool = False,
        digits: int = 20000,
        epochs: int = 8,
        batch_size: int = 128,
        lr: float = 1e-3,
        adv_epsilon: float = 0.12,
        adv_steps: int = 5,
        max_shift: int = 2,
        seed: int = 0,
        cache_dir: Optional[str] = "~/.cache/secure-ml/priors",
    ):
        self.enabled = enabled
        check_seed(seed, "--prior.seed", TORCH_SEED_MAX)
        self.config = PriorConfig(digits, epochs, batch_size, lr, adv_epsilon, adv_steps, max_shift, seed)
        self.cache_dir = cache_dir
        self.outcome: Optional[dict] = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit" or trainer.ckpt_path:
            return
        net = pl_module.net
        several = trainer.world_size > 1 and self.cache_dir is not None
        if several and not trainer.is_global_zero:
            trainer.strategy.barrier("prior")  # rank 0 pretrains and writes the cache first
        self.outcome = load_or_pretrain(net, self.config, self.cache_dir, rank_zero_info, write=trainer.is_global_zero)
        if several and trainer.is_global_zero:
            trainer.strategy.barrier("prior")
        msg = f"secure-ml: prior {self.outcome['source']} ({self.outcome['path'] or 'not cached'})"
        val = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
        if val is not None and hasattr(val, "tensors"):
            x, y = val.tensors
            device = next(net.parameters()).device
            with torch.no_grad():
                acc = (net(x.to(device)).argmax(1).cpu() == y).float().mean().item()
            msg += f"; the prior alone scores {acc:.4f} on the {len(y)} validation digits"
        rank_zero_info(msg)
