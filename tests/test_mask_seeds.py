"""The Poisson masks: secret by default, one seed per batch from a 256-bit key (a review found one 32-bit seed per run)."""

import torch
from torch.utils.data import TensorDataset

from secure_ml.data.sampling import MaskSeeds, PoissonSampler, train_loader

N, STEPS = 1000, 20


def masks_of(seeds: MaskSeeds, steps: int = STEPS) -> list:
    return list(PoissonSampler(num_samples=N, sample_rate=1 / 10, steps=steps, masks=seeds))


def test_masks_are_secret_by_default_and_reproducible_only_from_an_explicit_seed():
    assert masks_of(MaskSeeds()) != masks_of(MaskSeeds())  # a fresh 256-bit key per run
    assert masks_of(MaskSeeds(7)) == masks_of(MaskSeeds(7))
    assert masks_of(MaskSeeds(7, rank=0)) != masks_of(MaskSeeds(7, rank=1))  # each process its own masks
    assert "key" not in repr(MaskSeeds()) and MaskSeeds().secret and not MaskSeeds(7).secret


def test_seeds_are_not_cut_to_32_bits():
    # the control: torch's CPU generator keeps the low 32 bits, so a once-per-run seed had 2^32 possible mask streams
    a = torch.rand(N, generator=torch.Generator().manual_seed(5))
    b = torch.rand(N, generator=torch.Generator().manual_seed(5 + 2**32))
    assert torch.equal(a, b)
    assert masks_of(MaskSeeds(5)) != masks_of(MaskSeeds(5 + 2**32))


def test_one_batch_seed_does_not_give_the_next_batch():
    """Recovering one batch's 32-bit generator seed (brute force) and drawing on, as with a once-seeded generator, misses the next mask."""
    seeds = MaskSeeds(3)
    g = seeds.next()
    first = torch.rand(N, generator=g) < 0.1
    continued = torch.rand(N, generator=g) < 0.1  # what the old sampler drew next
    following = torch.rand(N, generator=seeds.next()) < 0.1
    assert not torch.equal(continued, following) and not torch.equal(first, following)


def test_the_masks_keep_the_poisson_rate_and_the_loader_uses_them():
    sizes = [len(b) for b in masks_of(MaskSeeds(11), steps=400)]
    mean = sum(sizes) / len(sizes)
    assert abs(mean - 100) < 3  # E = qN = 100, standard error of the mean 9.5 / 20 ≈ 0.5
    ds = TensorDataset(torch.zeros(N, 1), torch.zeros(N, dtype=torch.long))
    loader = train_loader(ds, 100, seed=0, poisson=True, masks=MaskSeeds(11))
    assert isinstance(loader.batch_sampler, PoissonSampler)
    assert [len(b[1]) for b in loader] == [len(m) for m in masks_of(MaskSeeds(11), steps=len(loader))]
