"""Training-loader construction: shuffled, distributed-shuffled, or Poisson (single or multi-process).

Lightning-free. Under several processes ``batch_size`` is the *global* batch size, so a
2-process run sees the same expected global batch (and the same Poisson rate q) as a
1-process run.
"""

import hashlib
import secrets
from typing import Optional

import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate


class MaskSeeds:
    """The Poisson masks' generator, reseeded before every batch with ``SHA-256(key ‖ rank ‖ batch)``.

    The key is 256 bits from the OS CSPRNG per loader (``seed`` None, the default: the masks are secret), or derived from
    ``seed`` for reproducible runs. torch's CPU generator keeps only the low 32 bits of a seed, so a generator seeded
    once per run gave all of a run's masks 32 bits of secrecy; here each batch has its own seed, as
    :class:`secure_ml.privacy.private.NoiseSource` does for the noise. ``rank`` gives each process its own masks.
    """

    def __init__(self, seed: Optional[int] = None, rank: int = 0):
        key = secrets.token_bytes(32) if seed is None else hashlib.sha256(b"secure-ml mask seed %d" % seed).digest()
        self._key = key + int(rank).to_bytes(8, "little")
        self.secret = seed is None
        self.drawn = 0
        self._generator = torch.Generator()

    def next(self) -> torch.Generator:
        """The generator for the next batch's mask."""
        digest = hashlib.sha256(self._key + self.drawn.to_bytes(8, "little")).digest()
        self.drawn += 1
        return self._generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def __repr__(self) -> str:  # never print the key
        return f"MaskSeeds(secret={self.secret}, drawn={self.drawn})"


class PoissonSampler(UniformWithReplacementSampler):
    """Opacus's Poisson sampler (each row in each batch with probability q), each batch's mask from its own seed."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int, masks: MaskSeeds):
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.masks = masks

    def __iter__(self):
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.masks.next()) < self.sample_rate
            yield mask.nonzero(as_tuple=False).reshape(-1).tolist()


class EmptySafeDistributedPoissonSampler(DistributedUniformWithReplacementSampler):
    """Opacus's distributed Poisson sampler, but an empty local draw is yielded, not skipped.

    Opacus skips empty local batches, so one rank can run fewer steps than another and
    DDP's all-reduce deadlocks. Yielding the empty batch keeps every rank on the same
    step count; the empty batch contributes a zero clipped sum (noise is still added
    once, on rank 0), which is exactly what the Poisson mechanism prescribes.
    """

    def __init__(self, *, masks: Optional[MaskSeeds] = None, **kwargs):
        super().__init__(**kwargs)
        self.masks = masks  # None: Opacus's own generator (one seed per run)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
            indices = torch.randperm(self.total_size, generator=g)
        else:
            indices = torch.arange(self.total_size)
        indices = indices[self.rank : self.total_size : self.num_replicas]
        for _ in range(self.num_batches):
            generator = self.masks.next() if self.masks is not None else self.generator
            mask = torch.rand(self.num_samples, generator=generator) < self.sample_rate
            yield indices[mask.nonzero(as_tuple=False).reshape(-1)].tolist()


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    poisson: bool,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    masks: Optional[MaskSeeds] = None,
) -> DataLoader:
    """The training loader; ``masks`` draws this rank's Poisson masks (default: a secret key of its own)."""
    if not poisson:
        if world_size == 1:
            return DataLoader(
                dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), num_workers=num_workers
            )
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=max(1, batch_size // world_size), sampler=sampler, num_workers=num_workers)
    # K batches per epoch at rate q = 1/K exactly. Opacus's samplers would run int(1/q) batches, which
    # for many K is K-1 (1/(1/99) = 98.99…): the accountant's q (1/len(loader)) would then disagree
    # with the sampler's and with the reference backend's. Passing steps=K keeps all three equal.
    steps = len(DataLoader(dataset, batch_size=batch_size))
    sample_rate = 1.0 / steps
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        batch_first=True,
        rand_on_empty=False,
        sample_empty_shapes=[(0, *shape_safe(t)) for t in first],
        dtypes=[dtype_safe(t) for t in first],
    )
    masks = masks if masks is not None else MaskSeeds(rank=rank)
    if world_size == 1:
        sampler = PoissonSampler(num_samples=len(dataset), sample_rate=sample_rate, steps=steps, masks=masks)
    else:
        sampler = EmptySafeDistributedPoissonSampler(
            total_size=len(dataset), sample_rate=sample_rate, shuffle_seed=seed, steps=steps, masks=masks
        )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
