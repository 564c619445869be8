"""Write ``secure-ml predict`` output to a CSV file in the run's log folder."""

import csv

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from secure_ml.callbacks._common import run_folder


class PredictionWriter(BasePredictionWriter):
    """One row per predicted digit: ``index, label, p0 … p9``.

    Args:
        filename: file name inside the run's log folder.
    """

    def __init__(self, filename: str = "predictions.csv"):
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        path = run_folder(trainer) / self.filename  # every rank: a broadcast under DDP
        if not trainer.is_global_zero or not predictions:
            return
        probs = torch.cat([p.detach().cpu() for p in predictions])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", *[f"p{k}" for k in range(probs.shape[1])]])
            for i, row in enumerate(probs.tolist()):
                w.writerow([i, int(torch.tensor(row).argmax()), *[f"{v:.6f}" for v in row]])
        rank_zero_info(f"secure-ml: wrote {len(probs)} predictions to {path}")
