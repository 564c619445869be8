"""Training-loader construction: shuffled, distributed-shuffled, or Poisson (single or multi-process).

Lightning-free. Under several processes ``batch_size`` is the *global* batch size, so a
2-process run sees the same expected global batch (and the same Poisson rate q) as a
1-process run.
"""

from typing import Optional

import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate


class EmptySafeDistributedPoissonSampler(DistributedUniformWithReplacementSampler):
    """Opacus's distributed Poisson sampler, but an empty local draw is yielded, not skipped.

    Opacus skips empty local batches, so one rank can run fewer steps than another and
    DDP's all-reduce deadlocks. Yielding the empty batch keeps every rank on the same
    step count; the empty batch contributes a zero clipped sum (noise is still added
    once, on rank 0), which is exactly what the Poisson mechanism prescribes.
    """

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
            indices = torch.randperm(self.total_size, generator=g)
        else:
            indices = torch.arange(self.total_size)
        indices = indices[self.rank : self.total_size : self.num_replicas]
        for _ in range(self.num_batches):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield indices[mask.nonzero(as_tuple=False).reshape(-1)].tolist()


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    poisson: bool,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    poisson_generator: Optional[torch.Generator] = None,
) -> DataLoader:
    """The training loader; ``poisson_generator`` must differ across ranks (it draws each rank's mask)."""
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
    if world_size == 1:
        sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=sample_rate, steps=steps, generator=poisson_generator)
    else:
        sampler = EmptySafeDistributedPoissonSampler(
            total_size=len(dataset), sample_rate=sample_rate, shuffle_seed=seed, steps=steps, generator=poisson_generator
        )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
