"""Sponge examples: hook-based activation energy for any activation, the ascent attacks, the Gaussian sponges,
the report, and the SpongeCallback on nets with other activations (or none it can measure)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks.sponge import SpongeReport, activation_energy, craft_sponges, gaussian_sponges, sponge_report
from secure_ml.callbacks import SpongeCallback
from secure_ml.cli import main
from secure_ml.data import MNISTDataModule
from secure_ml.defenses.energy import EnergyUndefined
from secure_ml.models.small_cnn import SmallCNN
from secure_ml.module import SecureClassifier
from tests.helpers.data import make_mnist_dir
from tests.helpers.models import trained_small_cnn
from tests.helpers.training import quiet_trainer, small_datamodule


class ActNet(nn.Module):
    """A small CNN whose activation is a module (``nn.Tanh()``...) or a function (``torch.tanh``...)."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(4)
        self.fc1 = nn.Linear(4 * 7 * 7, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.act(self.conv(x)))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def untrained() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def model(real_data_dir) -> SmallCNN:
    """The briefly trained SmallCNN shared with test_input_policy.py (trained once per session)."""
    return trained_small_cnn(str(real_data_dir))[0]


@pytest.fixture(scope="module")
def digits(real_data_dir) -> torch.Tensor:
    return trained_small_cnn(str(real_data_dir))[3][:12]


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def hidden_by_hand(m: SmallCNN, x: torch.Tensor):
    """The inputs of SmallCNN's conv2, fc1 and fc2, written out by hand."""
    z = (x - m.mean) / m.std
    a1 = m.pool(torch.relu(m.conv1(z)))
    a2 = torch.flatten(m.pool(torch.relu(m.conv2(a1))), 1)
    return [a1, a2, torch.relu(m.fc1(a2))]


@pytest.mark.parametrize("which", ["untrained", "model"])
def test_activation_energy_matches_hand_computation(which, request):
    model = request.getfixturevalue(which)
    x = noise(5)
    e = activation_energy(model, x)
    with torch.no_grad():
        acts = hidden_by_hand(model, x)
    l2 = sum(a.double().pow(2).flatten(1).sum(1) for a in acts)
    nonzero = sum((a != 0).flatten(1).sum(1) for a in acts)
    assert torch.allclose(e["l2_energy"], l2)
    assert torch.equal(e["nonzero"], nonzero)
    assert torch.allclose(e["density"], nonzero.double() / (16 * 14 * 14 + 32 * 7 * 7 + 128))
    assert e["layers"] == ["conv2", "fc1", "fc2"] and e["layer_density"].shape == (5, 3)
    assert torch.allclose(e["layer_density"][:, 2], (acts[2] != 0).double().mean(1))


@pytest.mark.parametrize(
    "act", [nn.Tanh(), nn.GELU(), nn.SiLU(), torch.tanh, F.gelu, F.silu, torch.relu], ids=lambda a: getattr(a, "__name__", type(a).__name__)
)
def test_energy_is_defined_for_any_activation_module_or_function(act):
    torch.manual_seed(0)
    net = ActNet(act).eval()
    x = noise(4)
    e = activation_energy(net, x)
    with torch.no_grad():
        h1 = net.pool(act(net.conv(x))).flatten(1)
        h2 = act(net.fc1(h1))
    assert torch.allclose(e["l2_energy"], (h1.double() ** 2).sum(1) + (h2.double() ** 2).sum(1), rtol=1e-5)
    if act is not torch.relu:
        assert (e["density"] > 0.99).all()  # smooth activations are (almost) never exactly zero
    sponges = craft_sponges(net, x, steps=10, lr=0.05, objective="l2")
    assert (activation_energy(net, sponges)["l2_energy"] > e["l2_energy"]).all()


def test_repeated_layer_calls_are_counted_and_named():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.fc, self.out = nn.Linear(784, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.inp(x.flatten(1)))
            return self.out(torch.relu(self.fc(torch.relu(self.fc(h)))))

    assert activation_energy(Twice(), noise(2))["layers"] == ["fc", "fc#2", "out"]


@pytest.mark.parametrize("net", [nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), nn.Flatten()], ids=["one_layer", "no_layer"])
def test_net_without_hidden_activations_is_refused(net):
    with pytest.raises(EnergyUndefined, match="no hidden activations"):
        activation_energy(net, noise(2))


@pytest.mark.parametrize("optimizer", ["sign", "adam"])
@pytest.mark.parametrize("start", ["noise", "digits"])
def test_l2_crafting_raises_energy_and_stays_in_range(model, digits, start, optimizer):
    x0 = noise(12) if start == "noise" else digits
    sponges = craft_sponges(model, x0, steps=15, lr=0.05, objective="l2", optimizer=optimizer)
    before, after = activation_energy(model, x0)["l2_energy"], activation_energy(model, sponges)["l2_energy"]
    assert (after > 1.3 * before).all()
    assert sponges.min() >= 0.0 and sponges.max() <= 1.0


@pytest.mark.parametrize("optimizer", ["sign", "adam"])
@pytest.mark.parametrize("start", ["noise", "digits"])
def test_l0_crafting_raises_density(model, digits, start, optimizer):
    x0 = noise(12, seed=1) if start == "noise" else digits
    sponges = craft_sponges(model, x0, steps=20, lr=0.01, objective="l0", optimizer=optimizer)
    before, after = activation_energy(model, x0)["density"], activation_energy(model, sponges)["density"]
    assert (after > before).all() and (after - before).mean() > 0.01
    assert sponges.min() >= 0.0 and sponges.max() <= 1.0


def test_unclamped_and_epsilon_bounded_crafting(model, digits):
    free = craft_sponges(model, digits, steps=10, lr=0.1, clamp=False)
    assert free.max() > 1.0 or free.min() < 0.0
    for optimizer in ("sign", "adam"):
        near = craft_sponges(model, digits, steps=10, lr=0.05, epsilon=0.1, optimizer=optimizer)
        assert (near - digits).abs().max() <= 0.1 + 1e-6
        assert (activation_energy(model, near)["l2_energy"] > activation_energy(model, digits)["l2_energy"]).all()


def test_crafting_is_side_effect_free_and_works_under_no_grad():
    torch.manual_seed(0)
    m = SmallCNN().train()
    m.fc2.eval()  # a deliberately mixed state must survive
    with torch.no_grad():
        s = craft_sponges(m, noise(3), steps=2, lr=0.05)
        a = craft_sponges(m, noise(3), steps=2, lr=0.05, optimizer="adam", objective="l0")
    assert not s.requires_grad and s.grad_fn is None and not a.requires_grad
    assert all(p.grad is None for p in m.parameters())
    assert m.training and m.conv1.training and not m.fc2.training  # eval mode was temporary
    assert not any(m._forward_hooks for m in m.modules())  # the recorder's hooks are gone
    assert torch.equal(craft_sponges(m, noise(3), steps=2, lr=0.05), s)  # deterministic


def test_mixed_variants_in_one_batch_match_separate_runs(model, digits):
    """The callback crafts all four variants in one batch: each row must be what its own variant gives alone."""
    x0 = torch.cat([noise(4, seed=7), digits[:4]])
    variants = [("sign", "l2"), ("adam", "l2"), ("sign", "l0"), ("adam", "l0")] * 2
    mixed = craft_sponges(model, x0, steps=8, lr=0.01, optimizer=[v[0] for v in variants], objective=[v[1] for v in variants])
    for i, own in enumerate(variants):
        # Batched and single convolutions differ in the last float bits, which Adam's division can amplify on
        # near-zero gradients: compare distances, the row must be far closer to its own variant than to any other.
        dist = {
            v: float((mixed[i] - craft_sponges(model, x0[i : i + 1], steps=8, lr=0.01, optimizer=v[0], objective=v[1])[0]).abs().mean())
            for v in variants[:4]
        }
        assert dist[own] < 1e-3 and all(dist[own] < 0.3 * d for v, d in dist.items() if v != own), (i, dist)
    with pytest.raises(ValueError, match="one per sample"):
        craft_sponges(model, x0, objective=["l2"] * 3)


def test_crafting_an_empty_batch_or_one_objective_per_row(model, digits):
    """Rows are regrouped by objective inside craft_sponges: an empty batch, and a list naming one objective for
    every row, give what the single-string call gives, in the caller's row order."""
    assert craft_sponges(model, digits[:0], steps=3).shape == (0, 1, 28, 28)
    for objective in ("l2", "l0"):
        one = craft_sponges(model, digits[:3], steps=3, lr=0.02, objective=objective, optimizer="adam")
        listed = craft_sponges(model, digits[:3], steps=3, lr=0.02, objective=[objective] * 3, optimizer=["adam"] * 3)
        assert torch.equal(one, listed)


def test_crafting_validates_arguments(model):
    with pytest.raises(ValueError, match="objective"):
        craft_sponges(model, noise(1), objective="l1")
    with pytest.raises(ValueError, match="optimizer"):
        craft_sponges(model, noise(1), optimizer="sgd")
    with pytest.raises(ValueError, match="lr"):
        craft_sponges(model, noise(1), lr=0.0)
    with pytest.raises(ValueError, match="floating-point"):
        craft_sponges(model, torch.zeros(1, 1, 28, 28, dtype=torch.uint8))


def test_gaussian_sponges():
    a = gaussian_sponges(4, [0.5, 5.0], torch.Generator().manual_seed(0))
    b = gaussian_sponges(4, [0.5, 5.0], torch.Generator().manual_seed(0))
    assert a.shape == (8, 1, 28, 28) and torch.equal(a, b)
    assert a[:4].std() < 1.0 < a[4:].std()  # scale-major order
    c = gaussian_sponges(4, [5.0], torch.Generator().manual_seed(0), clamp=True, shape=(28, 28))
    assert c.shape == (4, 28, 28) and c.min() == 0.0 and c.max() == 1.0
    with pytest.raises(ValueError, match="scales"):
        gaussian_sponges(4, [0.0])


def test_sponge_report(model, digits):
    sponges = craft_sponges(model, digits, steps=10, lr=0.05)
    r = sponge_report(model, digits, sponges, repeats=3)
    assert isinstance(r, SpongeReport)
    assert r.energy_ratio == pytest.approx(r.sponge_energy / r.clean_energy) and r.energy_ratio > 1.3
    assert r.density_ratio == pytest.approx(r.sponge_density / r.clean_density)
    assert r.clean_latency_s > 0 and r.sponge_latency_s > 0
    assert set(r.to_dict()) >= {"energy_ratio", "density_ratio", "latency_ratio"}
    with pytest.raises(ValueError, match="one shape"):
        sponge_report(model, digits, digits[:, :, :14], repeats=1)


def _fit(net, data_dir, tmp_path, callback):
    dm = MNISTDataModule(data_dir=str(data_dir), download=False, train_size=300, val_size=100, test_size=60, batch_size=50)
    trainer = quiet_trainer(tmp_path, callbacks=[callback])
    trainer.fit(SecureClassifier(net=net), dm)
    return trainer


@pytest.mark.parametrize("source", ["loop", "own"])
def test_callback_runs_on_a_tanh_net_and_calibrates_on_validation_digits_only(source, tiny_mnist, tmp_path, monkeypatch):
    """Regression: a tanh net crashed fit ("made no ReLU calls"). And the policy sees validation digits, never members,
    whether its statistics come from the validation loop's forward (``loop``) or from the callback's own (``own``)."""
    import secure_ml.callbacks.eval_record as record
    import secure_ml.callbacks.sponge as module

    seen, used = [], []
    if source == "own":
        monkeypatch.setattr(record.EvalRecord, "finish", lambda self: self.close() or False)
        real = module.activation_scores
        monkeypatch.setattr(module, "activation_scores", lambda net, x: seen.append(x.detach().cpu().clone()) or real(net, x))
    else:
        real_batch, real_calls = record.EvalRecord.batch, module.energy_from_calls
        monkeypatch.setattr(record.EvalRecord, "batch", lambda self, b: seen.append(b[0].detach().cpu().clone()) or real_batch(self, b))
        monkeypatch.setattr(module, "energy_from_calls", lambda parts: used.append(len(parts)) or real_calls(parts))
    cb = SpongeCallback(n_sponges=4, craft_steps=3, calibration_samples=100, latency_repeats=1)
    trainer = _fit(ActNet(nn.Tanh()), tiny_mnist, tmp_path, cb)
    m = trainer.callback_metrics
    assert 0 <= float(m["sponge/reject_rate_crafted"]) <= 1 and float(m["sponge/energy_bound_ratio"]) > 0
    # tanh is never exactly zero: the density limits would bound nothing, so the per-layer energy and positive-share checks replace them.
    assert cb.policy is not None and cb.policy.max_density is None and cb.policy.max_layer_density is None
    assert len(cb.policy.max_layer_energy) == len(cb.policy.max_layer_positive) == 2
    assert float(m["sponge/density_bound_ratio"]) == 1.0  # density cannot exceed 1, and is 1 on clean tanh digits
    assert used if source == "loop" else not used
    dm = trainer.datamodule
    val = {tuple(v.flatten().tolist()) for v in dm.val_dataset.tensors[0]}
    train = {tuple(v.flatten().tolist()) for v in dm.train_dataset.tensors[0]}
    calib = {tuple(v.flatten().tolist()) for v in torch.cat(seen)}
    assert calib <= val and not calib & train and len(calib) > 50


def test_net_without_hidden_activations_gets_one_line_naming_the_option(tiny_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--data.data_dir", str(tiny_mnist), "--data.download", "false", "--trainer.logger", "false"]
    args += ["--data.train_size", "300", "--data.val_size", "100", "--data.test_size", "100"]
    args += ["--model.net", "torch.nn.Linear", "--model.net.init_args.in_features", "28", "--model.net.init_args.out_features", "10"]
    args += ["--robustness.enabled", "false", "--membership.enabled", "false", "--trainer.enable_checkpointing", "false"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith("secure-ml: error: --sponge: Linear has no hidden activations")
    assert "--sponge.enabled false" in err[-1] and "Traceback" not in "\n".join(err)


def test_calibration_uses_every_validation_digit_by_default(tmp_path, monkeypatch):
    """``calibration_samples`` null (the default): the policy is calibrated on the whole validation split (--data.val_size),
    here 900 digits, more than the old fixed default of 800."""
    import secure_ml.callbacks.eval_record as record
    import secure_ml.callbacks.sponge as module

    seen = []
    monkeypatch.setattr(record.EvalRecord, "finish", lambda self: self.close() or False)  # the callback's own forward
    real = module.activation_scores
    monkeypatch.setattr(module, "activation_scores", lambda net, x: seen.append(x.detach().cpu().clone()) or real(net, x))
    dm = MNISTDataModule(
        data_dir=str(make_mnist_dir(tmp_path / "data", n_train=1000)), download=False, train_size=1000, val_size=900, test_size=60
    )
    trainer = quiet_trainer(tmp_path, callbacks=[SpongeCallback(n_sponges=4, craft_steps=3, latency_repeats=1)])
    trainer.fit(SecureClassifier(net=ActNet(nn.Tanh())), dm)
    val = {tuple(v.flatten().tolist()) for v in dm.val_dataset.tensors[0]}
    assert len(val) > 800 and seen and all({tuple(v.flatten().tolist()) for v in x} == val for x in seen)


def test_more_calibration_digits_than_the_validation_split_is_refused_in_one_line(tiny_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--data.data_dir", str(tiny_mnist), "--data.download", "false", "--trainer.logger", "false"]
    args += ["--data.train_size", "300", "--data.val_size", "100", "--data.test_size", "100", "--sponge.calibration_samples", "150"]
    args += ["--robustness.enabled", "false", "--membership.enabled", "false", "--trainer.enable_checkpointing", "false"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == (
        "secure-ml: error: --sponge.calibration_samples (150) is larger than the 100 validation digits (--data.val_size); "
        "lower it, raise --data.val_size, or leave it null to use them all"
    )


def test_a_checkpoint_never_carries_a_policy_calibrated_on_other_weights(tiny_mnist, tmp_path):
    """Resumed with validation off, the fit trains new weights without calibrating: its checkpoint holds no policy
    (so export/serve calibrate or refuse) instead of the first fit's, whose limits were set on the old weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from secure_ml.release.checkpoint import stored_policy

    def run(folder, epochs, resume=None, **kw):
        cb = SpongeCallback(n_sponges=4, craft_steps=3, calibration_samples=100, latency_repeats=1)
        ckpt = ModelCheckpoint(dirpath=tmp_path / folder, filename="last", save_on_train_epoch_end=True)
        trainer = quiet_trainer(tmp_path, epochs=epochs, callbacks=[cb, ckpt], enable_checkpointing=True, **kw)
        trainer.fit(SecureClassifier(net=ActNet(nn.ReLU())), small_datamodule(tiny_mnist, dp=False), ckpt_path=resume)
        return torch.load(ckpt.best_model_path, weights_only=True)

    first = run("a", 1)
    assert stored_policy(first) is not None  # calibrated on the weights it is saved with
    resumed = run("b", 2, resume=str(tmp_path / "a" / "last.ckpt"), limit_val_batches=0)
    assert resumed["global_step"] > first["global_step"] and stored_policy(resumed) is None
