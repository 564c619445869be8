"""MNIST LightningDataModule: reproducible subsets, label-flip poisoning, sanitization, Poisson sampling."""

import hashlib
import secrets
from typing import Optional

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, TensorDataset

from secure_ml.data.canaries import CanaryConfig, with_canaries
from secure_ml.data.mnist import load_mnist
from secure_ml.data.poisoning import PoisonConfig, flip_labels
from secure_ml.data.sampling import train_loader
from secure_ml.data.sanitization import SanitizationReport, SanitizerConfig, sanitize
from secure_ml.errors import ConfigError


class MNISTDataModule(LightningDataModule):
    """MNIST subsets held in memory as tensors.

    ``train_size`` digits are drawn (seeded) from torchvision's training split. The first
    ``val_size`` of them form a clean validation split that is never poisoned and never
    trained on; the rest are poisoned (``poison``), sanitized (``sanitizer``) and become
    the training set. Membership: the samples in ``train_dataset`` after sanitization are
    *members*; ``val_dataset`` and ``test_dataset`` (``test_size`` digits drawn from the
    test split) are *non-members*.

    Args:
        data_dir: folder holding (or receiving) torchvision's ``MNIST/raw`` files.
        download: let torchvision download MNIST into ``data_dir`` when it is missing.
        train_size: digits drawn from the training split (members + validation).
        val_size: of those, digits held back as the clean validation split.
        test_size: digits drawn from the test split.
        batch_size: global batch size (split across processes); with Poisson sampling, the expected batch size.
        seed: seed of the subset draw and of the shuffled (non-DP) training order.
        sampling_seed: seed of the Poisson masks under DP; null (default) draws a fresh secret seed per run. The masks are part of the DP mechanism: a seed published in config.yaml would let anyone replay which digits each step used.
        poison: label-flip poisoning of the training part.
        sanitizer: sanitization applied after poisoning.
        poisson_sampling: sample training batches by Poisson sampling (set by the CLI whenever DP is on).
        canaries: one-run privacy audit canaries, added after sanitization (off by default; see configs/audit.yaml).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = True,
        train_size: int = 8000,
        val_size: int = 800,
        test_size: int = 2000,
        batch_size: int = 64,
        seed: int = 42,
        sampling_seed: Optional[int] = None,
        poison: PoisonConfig = PoisonConfig(),
        sanitizer: SanitizerConfig = SanitizerConfig(),
        poisson_sampling: bool = False,
        num_workers: int = 0,
        canaries: CanaryConfig = CanaryConfig(),
    ):
        super().__init__()
        # The validation split is the clean non-member set the scorecard needs (the sponge check halves it).
        for name, value, low in (
            ("train_size", train_size, 1),
            ("val_size", val_size, 2),
            ("test_size", test_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise ConfigError(f"--data.{name} must be >= {low}; got {value}")
        if val_size >= train_size:
            raise ConfigError(f"--data.val_size ({val_size}) must be smaller than --data.train_size ({train_size})")
        self.data_dir, self.download = data_dir, download
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.sampling_seed = sampling_seed
        self.poison, self.sanitizer = poison, sanitizer
        self.poisson_sampling = poisson_sampling
        self.canaries, self.canary_set = canaries, None
        self.train_dataset: Optional[TensorDataset] = None
        self.val_dataset: Optional[TensorDataset] = None
        self.test_dataset: Optional[TensorDataset] = None
        self.poisoned_indices: Optional[torch.Tensor] = None  # rows of the pre-sanitization training part
        self.kept_indices: Optional[torch.Tensor] = None  # rows of the pre-sanitization training part that were kept
        self.sanitization_report: Optional[SanitizationReport] = None
        self.fingerprint: Optional[str] = None  # hash of the member / non-member split (see state_dict)
        self._expected_fingerprint: Optional[str] = None
        self._test_idx: Optional[torch.Tensor] = None

    def prepare_data(self) -> None:
        for train in (True, False):
            load_mnist(self.data_dir, train=train, download=self.download)

    @staticmethod
    def _draw(pool: int, size: int, flag: str, seed: int) -> torch.Tensor:
        if size > pool:
            raise ConfigError(f"--data.{flag} ({size}) is larger than the {pool} digits available in that split")
        return torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:size]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_dataset is None:
            x, y = load_mnist(self.data_dir, train=False, download=False)
            idx = self._draw(len(y), self.test_size, "test_size", self.seed + 1)
            self._test_idx = idx
            self.test_dataset = TensorDataset(x[idx], y[idx])
        # Training members are needed beyond fit: membership inference at validate/test compares against them.
        if self.train_dataset is None and stage != "predict":
            self._setup_train()

    def _setup_train(self) -> None:
        x, y = load_mnist(self.data_dir, train=True, download=False)
        idx = self._draw(len(y), self.train_size, "train_size", self.seed)
        val_idx, train_idx = idx[: self.val_size], idx[self.val_size :]
        self.val_dataset = TensorDataset(x[val_idx], y[val_idx])
        x_train, y_train = x[train_idx], y[train_idx]
        poisoned = None
        if self.poison.rate > 0:
            gen = torch.Generator().manual_seed(self.poison.seed)
            y_train, poisoned = flip_labels(y_train, self.poison.rate, 10, self.poison.target_label, gen)
            target = f"class {self.poison.target_label}" if self.poison.target_label is not None else "random other classes"
            rank_zero_info(f"secure-ml: poisoned {len(poisoned)}/{len(y_train)} training labels to {target}")
        self.poisoned_indices = poisoned
        x_train, y_train, self.kept_indices, report = sanitize(x_train, y_train, self.sanitizer, poisoned)
        self.sanitization_report = report
        if self.sanitizer.method != "none":
            rank_zero_info(f"secure-ml: {report.summary()}")
        if len(y_train) == 0:
            raise ConfigError("sanitization removed every training sample; loosen --data.sanitizer")
        self.train_dataset, self.canary_set = with_canaries(TensorDataset(x_train, y_train), self.canaries)
        digest = hashlib.sha256()
        for t in (val_idx, train_idx[self.kept_indices], y_train, self._test_idx):
            digest.update(t.numpy().tobytes())
        self.fingerprint = digest.hexdigest()[:16]
        if self._expected_fingerprint is not None:
            self._check_fingerprint(self._expected_fingerprint)

    # The split into members / non-members travels in the checkpoint: evaluating a checkpoint on a
    # different split would call trained digits "non-members" and silently break membership inference.
    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint} if self.fingerprint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        expected = state_dict.get("fingerprint")
        if expected is None:
            return
        if self.fingerprint is None:  # not set up yet: checked at the end of setup
            self._expected_fingerprint = expected
            return
        self._check_fingerprint(expected)

    def _check_fingerprint(self, expected: str) -> None:
        if expected != self.fingerprint:
            raise ConfigError(
                "the checkpoint was trained on a different data split (its member/non-member fingerprint differs): "
                "pass the same --data.* options as in fit, e.g. --config lightning_logs/version_N/config.yaml"
            )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # Each rank draws its own Poisson mask: a rank-specific generator, never the shared global seed,
        # and by default a secret one (see sampling_seed).
        base = self.sampling_seed if self.sampling_seed is not None else secrets.randbits(62)
        poisson_gen = torch.Generator().manual_seed(base + 7919 * (rank + 1))
        return train_loader(
            self.train_dataset, self.batch_size, self.seed, self.poisson_sampling, world_size, rank, self.num_workers, poisson_gen
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, 256), num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=max(self.batch_size, 256), num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
