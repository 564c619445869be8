"""MNIST LightningDataModule: reproducible subsets, label-flip poisoning, sanitization, Poisson sampling."""

from dataclasses import replace
from typing import Optional

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, TensorDataset

from secure_ml.data.canaries import KINDS, CanaryConfig, with_canaries
from secure_ml.data.mnist import load_mnist
from secure_ml.data.poisoning import PoisonConfig
from secure_ml.data.sampling import MaskSeeds, train_loader
from secure_ml.data.sanitization import SanitizationReport, SanitizerConfig, sanitize
from secure_ml.data.split_key import key_id, load_or_create_key, read_key, resolve_key_path, split_tag, tags_equal
from secure_ml.data.training_part import draw, training_part
from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed
from secure_ml.models.batching import EVAL_BATCH


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
        canaries: one-run privacy audit canaries, added after sanitization (off by default; see configs/audit.yaml). They are members: the split check covers them.
        num_workers: DataLoader worker processes.
        split_key: file holding the secret key of the checkpoint's split check (created 0600 when missing); null: ``$SECURE_ML_KEY_DIR/split.key`` or ``~/.config/secure-ml/split.key``. Never stored in a checkpoint; copy it (privately) to check a checkpoint on another machine.
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
        split_key: Optional[str] = None,
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
        check_seed(seed, "--data.seed", TORCH_SEED_MAX)
        if val_size >= train_size:
            raise ConfigError(f"--data.val_size ({val_size}) must be smaller than --data.train_size ({train_size})")
        self.data_dir, self.download = data_dir, download
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.sampling_seed = sampling_seed
        self.poison, self.sanitizer = poison, sanitizer
        self.poisson_sampling = poisson_sampling
        self.split_key = split_key
        self.canaries, self.canary_set = canaries, None
        self._real_train: Optional[TensorDataset] = None  # the training set without canaries
        self.train_dataset: Optional[TensorDataset] = None
        self.val_dataset: Optional[TensorDataset] = None
        self.test_dataset: Optional[TensorDataset] = None
        self.poisoned_indices: Optional[torch.Tensor] = None  # rows of the pre-sanitization training part
        self.kept_indices: Optional[torch.Tensor] = None  # rows of the pre-sanitization training part that were kept
        self.sanitization_report: Optional[SanitizationReport] = None
        self._split: Optional[tuple] = None  # (validation rows, member rows, member labels, test rows): see state_dict
        self._expected_split: Optional[dict] = None
        self._key: Optional[bytes] = None  # the split key, read from split_key; never logged or checkpointed
        self._test_idx: Optional[torch.Tensor] = None

    def prepare_data(self) -> None:
        for train in (True, False):
            load_mnist(self.data_dir, train=train, download=self.download)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_dataset is None:
            x, y = load_mnist(self.data_dir, train=False, download=False)
            idx = draw(len(y), self.test_size, "test_size", self.seed + 1)
            self._test_idx = idx
            self.test_dataset = TensorDataset(x[idx], y[idx])
        # Training members are needed beyond fit: membership inference at validate/test compares against them.
        if self.train_dataset is None and stage != "predict":
            self._setup_train()
        if stage == "fit":  # checkpoints will be tagged: find or create the key now, not after the first epoch
            self._split_key_bytes()

    def _setup_train(self) -> None:
        x, y = load_mnist(self.data_dir, train=True, download=False)
        part = training_part(y, self.train_size, self.val_size, self.seed, self.poison)
        val_idx, train_idx = part.val_idx, part.train_idx
        self.val_dataset = TensorDataset(x[val_idx], y[val_idx])
        self.poisoned_indices = part.poisoned  # rows of the pre-sanitization training part
        if part.poisoned is not None:
            target = f"class {self.poison.target_label}" if self.poison.target_label is not None else "random other classes"
            rank_zero_info(f"secure-ml: poisoned {len(part.poisoned)}/{len(part.labels)} training labels to {target}")
        x_train, y_train = self._sanitize(x[train_idx], part.labels)
        self._real_train = TensorDataset(x_train, y_train)
        self._split = (val_idx, train_idx[self.kept_indices], y_train, self._test_idx)
        saved = (self._expected_split or {}).get("canaries")
        self._add_canaries(self.canaries if saved is None else self._adopt(saved))
        if self._expected_split is not None:
            self._check_split(self._expected_split)

    def _add_canaries(self, cfg: CanaryConfig) -> None:
        """Append ``cfg``'s canaries (the hook every training row goes through last) and extend the split check with them."""
        self.train_dataset, self.canary_set = with_canaries(self._real_train, cfg)
        c = self.canary_set  # without canaries the check is the same as before they existed
        self._split = self._split[:4] + (
            () if c is None else (torch.tensor([c.seed, len(c.y), KINDS.index(c.kind), *c.included.tolist()]),)
        )

    def _adopt(self, saved: dict) -> CanaryConfig:
        """The checkpoint's canaries unless a seed is pinned: a secret seed cannot be re-entered, so ``test`` and a resumed ``fit`` reuse them."""
        if self.canaries.seed is not None:
            return self.canaries
        return replace(self.canaries, seed=int(saved["seed"]), count=int(saved["count"]), kind=saved["kind"])

    def _sanitize(self, images: torch.Tensor, labels: torch.Tensor):
        """Apply ``sanitizer``; records ``kept_indices`` (rows of the training part kept) and ``sanitization_report``."""
        images, labels, self.kept_indices, report = sanitize(images, labels, self.sanitizer, self.poisoned_indices)
        self.sanitization_report = report
        if self.sanitizer.method != "none":
            rank_zero_info(f"secure-ml: {report.summary()}")
        if len(labels) == 0:
            raise ConfigError("sanitization removed every training sample; loosen --data.sanitizer")
        return images, labels

    # The split into members / non-members travels in the checkpoint as an HMAC under a key that stays on
    # this machine (split_key.py): evaluating a checkpoint on a different split would call trained digits
    # "non-members" and silently break membership inference, but an unkeyed hash of the split would be a
    # membership oracle for anyone holding the checkpoint.
    def state_dict(self) -> dict:
        if self._split is None:
            return {}
        key = self._split_key_bytes()
        check = {"key_id": key_id(key), "tag": split_tag(key, self._split)}
        if self.canary_set is not None:  # the audit needs them again; the checkpoint already holds the weights that saw them
            check["canaries"] = {"seed": self.canary_set.seed, "count": len(self.canary_set.y), "kind": self.canary_set.kind}
        return {"split_check": check}

    def _split_key_bytes(self) -> bytes:
        if self._key is None:
            path = resolve_key_path(self.split_key)
            try:
                self._key = load_or_create_key(path)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the split key file {path} ({exc.strerror or type(exc).__name__}); pass --data.split_key FILE in a writable folder"
                ) from None
        return self._key

    def load_state_dict(self, state_dict: dict) -> None:
        expected = state_dict.get("split_check")
        if expected is None:
            if "fingerprint" in state_dict:
                rank_zero_warn("secure-ml: this checkpoint predates keyed split checks: its member/non-member split is not checked")
            return
        if self._split is None:  # not set up yet: checked at the end of setup
            self._expected_split = expected
            return
        saved = expected.get("canaries")
        if saved is not None and self.canaries.seed is None:
            self._add_canaries(self._adopt(saved))
        self._check_split(expected)

    def _check_split(self, expected: dict) -> None:
        path = resolve_key_path(self.split_key)
        key = self._key if self._key is not None else read_key(path)
        if key is not None and self.split_key is not None and key_id(key) != expected.get("key_id"):
            raise ConfigError(  # a key file named on purpose that is not the one: the check the user asked for cannot run
                f"--data.split_key {path} holds key id {key_id(key)}, but this checkpoint's split was tagged with key id "
                f"{expected.get('key_id')}: pass the key file of the machine that ran fit (or leave --data.split_key unset: "
                "the check is then skipped with a warning)"
            )
        if key is None or key_id(key) != expected.get("key_id"):
            rank_zero_warn(
                f"secure-ml: split check skipped: the key this checkpoint was tagged with (id {expected.get('key_id')}) is not in {path}; "
                "pass --data.split_key with the training machine's key file to check the member/non-member split"
            )
            return
        if not tags_equal(split_tag(key, self._split), str(expected.get("tag"))):
            raise ConfigError(
                "the checkpoint was trained on a different data split (its member/non-member split check differs): "
                "pass the same --data.* options as in fit, e.g. --config lightning_logs/version_N/config.yaml"
            )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # Each rank draws its own Poisson masks, each batch's from its own seed, never the shared global seed,
        # and by default from a secret key (see sampling_seed and MaskSeeds).
        masks = MaskSeeds(self.sampling_seed, rank)
        return train_loader(
            self.train_dataset, self.batch_size, self.seed, self.poisson_sampling, world_size, rank, self.num_workers, masks
        )

    # Evaluation batches: the training batch size, at least EVAL_BATCH (larger CPU batches are slower, secure_ml.models.batching).
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, EVAL_BATCH), num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=max(self.batch_size, EVAL_BATCH), num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
