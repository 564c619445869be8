"""DP step modes: every registered mode through dp_step (the code users and the benchmark run), empty batches, secret noise."""

import importlib.util

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from secure_ml.adversarial import AdversarialConfig
from secure_ml.models import SmallCNN
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import make_private
from secure_ml.privacy.modes import MODES
from secure_ml.privacy.private import NoiseSource
from secure_ml.privacy.steps import dp_step
from tests.helpers.data import REPO

N = 256


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _private(mode: str, sigma=1.0, clip=1.0, seed=0, noise_seed=0):
    x, y = _data()
    torch.manual_seed(seed)
    net = SmallCNN()
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(x, y), batch_size=32), generator=torch.Generator().manual_seed(0))
    cfg = DPConfig(backend=MODES[mode].backend, noise_multiplier=sigma, max_grad_norm=clip, noise_seed=noise_seed)
    return net, make_private(net, torch.optim.SGD(net.parameters(), lr=0.5), loader, cfg, total_steps=10, mode=mode)


def _flat(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _step(mode, x, y, adv, **kw):
    net, private = _private(mode, **kw)
    before = _flat(net)
    dp_step(private, net, private.optimizer, x, y, adv)
    assert private.steps == 1  # one accountant step per dp_step, whatever the batch
    update = _flat(net) - before
    private.close()
    return update


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_every_mode_takes_the_same_step_with_zero_noise(ratio):
    x, y = _data(24, seed=1)
    adv = AdversarialConfig(epsilon=0.05, ratio=ratio)
    modes = [m for m in MODES.values() if m.mixes or ratio in (0.0, 1.0)]
    assert {"hooks", "reference"} <= {m.name for m in modes} and ("ghost" in {m.name for m in modes}) == (ratio == 1.0)
    updates = {m.name: _step(m.name, x, y, adv, sigma=0.0, clip=0.05) for m in modes}
    ref = updates.pop("reference")
    assert ref.abs().max() > 0
    for name, upd in updates.items():
        assert torch.allclose(upd, ref, atol=1e-5, rtol=0), (name, (upd - ref).abs().max())


def test_an_empty_batch_is_a_noise_only_step_in_every_mode():
    x, y = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    updates = {name: _step(name, x, y, AdversarialConfig(epsilon=0.05, ratio=1.0)) for name in MODES}
    ref = updates.pop("reference")
    expected_std = 0.5 * 1.0 * 1.0 / 32  # lr · σ · C / expected batch size (N q = 256 / 8 batches)
    assert abs(float(ref.std()) / expected_std - 1) < 0.02
    for name, upd in updates.items():  # same secret key → same per-step seed → the same noise in every mode
        assert torch.allclose(upd, ref, atol=1e-7, rtol=0), name


def test_privacy_step_limit_stops_every_mode_before_it_reads_the_batch():
    x, y = _data(16)
    for name in MODES:
        net, private = _private(name)
        private.step_limit = 0
        before = _flat(net)
        assert dp_step(private, net, private.optimizer, x, y, AdversarialConfig()) is None
        assert private.steps == 0 and torch.equal(_flat(net), before)
        private.close()


def test_seeds_differing_only_above_bit_32_give_different_noise():
    """torch's CPU generator keeps 32 bits of a seed; our per-step seeds are derived from all of noise_seed."""
    low, high = 5, 5 + (7 << 32)
    same = [torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (low, high)]
    assert torch.equal(*same)  # the weakness is real: raw manual_seed ignores bits above 32
    streams = []
    for s in (low, high):
        src = NoiseSource(torch.device("cpu"), s)
        src.reseed(0)
        streams.append(torch.randn(8, generator=src.generator))
    assert not torch.equal(*streams)


def test_each_step_is_reseeded_and_default_seeds_are_secret():
    src = NoiseSource(torch.device("cpu"), 3)
    assert len({src.step_seed(t) & 0xFFFFFFFF for t in range(64)}) == 64  # fresh 32 CPU-generator bits per step
    assert NoiseSource(torch.device("cpu"), 3).step_seed(7) == src.step_seed(7)  # a fixed noise_seed reproduces (tests only)
    assert "key" not in repr(src) and NoiseSource(torch.device("cpu")).secret
    x, y = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    seeded = [_step("ghost", x, y, AdversarialConfig(), noise_seed=11) for _ in range(2)]
    assert torch.equal(*seeded)  # control: the comparison below could see equal noise
    secret = [_step("ghost", x, y, AdversarialConfig(), noise_seed=None) for _ in range(2)]
    assert not torch.allclose(*secret)


def test_benchmark_times_dp_step_itself(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # train_step.py imports its sibling bk_bench.py
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def counting(private, *args):
        calls.append(private.mode)
        return dp_step(private, *args)

    monkeypatch.setattr(bench, "dp_step", counting)
    x, y = _data(64)
    variants = bench.build_variants(SmallCNN().state_dict(), x, y, x[:8], y[:8], 8, torch.device("cpu"))
    for name, (_backend, mode) in bench.DP_VARIANTS.items():
        variants[name]()
        assert calls[-1] == mode, name
    assert sorted(calls) == sorted(m for _, m in bench.DP_VARIANTS.values())
