"""The input policy's reconstruction check: an autoencoder of digit shapes (procedural digits only) rejects
sponges crafted from digits that the activation checks let through on a tanh net, keeps clean non-members,
binds the adaptive attacker, and travels in the policy dict, the checkpoint and the release."""

import base64
import json
from collections import Counter

import pytest
import torch
from safetensors.torch import save as st_save

from secure_ml.attacks.sponge import activation_energy, craft_sponges
from secure_ml.attacks.sponge_adaptive import adaptive_sponges
from secure_ml.callbacks.sponge import SpongeCallback
from secure_ml.defenses import InputPolicy
from secure_ml.defenses import reconstruction as rec
from secure_ml.errors import ConfigError
from tests.helpers.models import trained_tanh_cnn

SMALL = rec.ReconstructionConfig(digits=2000, epochs=3)  # the default is 8,000 x 12: this one is ~6x cheaper and weaker


@pytest.fixture(scope="module")
def ae_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ae-cache"))


@pytest.fixture(scope="module")
def autoencoder(ae_cache):
    return rec.load_or_train(SMALL, ae_cache)


@pytest.fixture(scope="module")
def tanh_policies(real_data_dir, autoencoder):
    """The tanh test net, its policy with and without the autoencoder (800 non-member digits each), the test digits."""
    model, x, _, xt, _ = trained_tanh_cnn(str(real_data_dir))
    with_ae = InputPolicy.calibrate(model, x[2000:2800], reconstruction_net=rec.encode(autoencoder))
    return model, with_ae, InputPolicy.calibrate(model, x[2000:2800]), xt


def reasons(decisions):
    return Counter(d.reason for d in decisions)


@pytest.mark.slow
def test_weights_round_trip_and_anything_else_is_refused_in_one_sentence(autoencoder):
    x = torch.rand(4, 1, 28, 28)
    again = rec.decode(rec.encode(autoencoder))
    assert torch.equal(rec.reconstruction_error(again, x), rec.reconstruction_error(autoencoder, x))
    state = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    wrong_shape = {**state, "encoder.0.weight": torch.zeros(8, 1, 3, 3)}
    not_finite = {**state, "encoder.0.bias": torch.full_like(state["encoder.0.bias"], float("nan"))}
    missing = {k: v for k, v in state.items() if k != "decoder.3.weight"}
    for bad in [
        "not base64 !",
        base64.b64encode(b"garbage").decode(),
        *(base64.b64encode(st_save(s)).decode() for s in (wrong_shape, missing)),
    ]:
        with pytest.raises(ValueError, match="^reconstruction_net is not this version's autoencoder weights") as exc:
            rec.decode(bad)
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="non-finite"):
        rec.decode(base64.b64encode(st_save(not_finite)).decode())
    with pytest.raises(ValueError, match="^reconstruction_net is longer than"):
        rec.decode("A" * (rec.MAX_TEXT + 4))


class _Drawn(torch.nn.Module):
    """A stand-in autoencoder that always redraws the same image."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.image = image

    def forward(self, x):
        return self.image.expand_as(x)


def test_the_two_errors_count_faint_and_background_pixels():
    """Faint error: pixels faint in the image (x < FAINT). Background error: faint in the image and in its redrawing
    (the rims the autoencoder draws do not count). Strokes and strong ink count in neither."""
    drawn, x = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    drawn[..., 10, 5:15] = 0.9  # a stroke the autoencoder draws...
    drawn[..., 11, 5:15] = 0.25  # ...and its blurred rim, which the image lacks: 10 x 0.25, faint error only
    x[..., 10, 5:15] = 0.95  # the writer's stroke (x >= FAINT): neither
    x[..., 20, 0:4] = 0.1  # faint ink on the background: 4 x 0.1, both
    x[..., 24, 0:2] = 0.5  # strong ink on the background (x >= FAINT): neither (docs: the cheapest route)
    assert rec.ERRORS == ("faint", "background") and rec.FAINT == 0.3 and rec.BACKGROUND == 0.2
    assert rec.reconstruction_error(_Drawn(drawn), x).tolist() == [pytest.approx([2.9, 0.4], abs=1e-5)]
    x.requires_grad_(True)
    rec.reconstruction_error(_Drawn(drawn), x)[:, 1].sum().backward()
    assert x.grad[..., 20, 0:4].abs().min() > 0 and x.grad[..., 11, 5:15].abs().max() == 0  # the gradient flows where it counts


@pytest.mark.slow
def test_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    cfg = rec.ReconstructionConfig(digits=64, epochs=1, batch_size=32)
    a, b = rec.train(cfg), rec.train(cfg)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    first = rec.load_or_train(cfg, str(tmp_path))
    (path,) = tmp_path.glob("reconstruction-*.safetensors")
    monkeypatch.setattr(rec, "train", lambda *a, **k: pytest.fail("trained again instead of reading the cache"))
    assert rec.encode(rec.load_or_train(cfg, str(tmp_path))) == rec.encode(first) == rec.encode(a)
    path.write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="cached autoencoder .* cannot be loaded .*--sponge.reconstruction_cache_dir"):
        rec.load_or_train(cfg, str(tmp_path))


@pytest.mark.parametrize("name, value", [("epochs", 0), ("digits", -1), ("batch_size", 1.5), ("lr", 0.0)])
def test_bad_settings_name_the_flag(name, value):
    with pytest.raises(ConfigError, match=f"^--sponge.reconstruction_{name} must be"):
        rec.ReconstructionConfig(**{name: value})


@pytest.mark.slow
def test_clean_non_members_pass_and_sponges_from_digits_are_rejected(tanh_policies):
    """The attack: L0 sponges crafted from digits (20 steps). Negative control: the same policy without the autoencoder accepts them."""
    model, with_ae, without, xt = tanh_policies
    assert with_ae.max_reconstruction is not None and with_ae.max_energy == without.max_energy
    assert sum(not d.allowed for d in with_ae.check_batch(xt, model)) <= 10  # ≤ 0.5% of 2,000 held-out non-members
    for optimizer in ("sign", "adam"):
        sponges = craft_sponges(model, xt[:16], steps=20, lr=0.01, objective="l0", optimizer=optimizer)
        assert reasons(with_ae.check_batch(sponges, model))["reconstruction"] >= 12
        assert reasons(without.check_batch(sponges, model))["ok"] == 16
    rejected = next(d for d in with_ae.check_batch(sponges, model) if not d.allowed)
    assert rejected.detail == "the image does not resemble the digits the policy was calibrated on"  # no number in it


@pytest.mark.slow
def test_adaptive_attacker_knows_the_reconstruction_limit(tanh_policies):
    """What it returns passes the autoencoder; the same attacker blind to it (pixel checks only) returns inputs the check rejects."""
    model, with_ae, _, xt = tanh_policies
    alone = InputPolicy(max_reconstruction=with_ae.max_reconstruction, reconstruction_net=with_ae.reconstruction_net)
    x0 = xt[20:26]
    sponges, accepted = adaptive_sponges(model, alone, x0, objective="l0", steps=40, lr=0.03)
    assert accepted.all() and all(d.allowed for d in alone.check_batch(sponges, model))
    positive = lambda x: activation_energy(model, x)["layer_positive"].sum(1)  # noqa: E731 - what the l0 attacker raises
    assert (positive(sponges) > positive(x0)).sum() >= 4  # it did climb, inside the limit (not x0 handed back)
    blind, _ = adaptive_sponges(model, InputPolicy(), x0, objective="l0", steps=40, lr=0.03)
    assert reasons(alone.check_batch(blind, model))["reconstruction"] >= 4


@pytest.mark.slow
def test_policy_dict_version_5_round_trip_and_refusals(tanh_policies):
    _, with_ae, without, _ = tanh_policies
    d = with_ae.to_dict()
    assert d["version"] == 5 and isinstance(d["reconstruction_net"], str) and len(d["max_reconstruction"]) == 2
    back = InputPolicy.from_dict(json.loads(json.dumps(d)))
    assert back == with_ae and back.reconstruction_model() is not None
    assert "reconstruction_net" not in repr(with_ae)  # 100 kB of base64 stays out of logs
    v3 = {**without.to_dict(), "version": 3}
    v3.pop("max_reconstruction"), v3.pop("reconstruction_net")
    assert InputPolicy.from_dict(v3) == without
    with pytest.raises(ValueError, match="unknown InputPolicy field.*max_reconstruction"):
        InputPolicy.from_dict({**d, "version": 3})
    # version 4 bounded the faint error alone: its single limit is not today's pair, so it is refused, not reinterpreted
    with pytest.raises(ValueError, match="version-4 policy's reconstruction limit bounds one error.*recalibrate it"):
        InputPolicy.from_dict({**d, "version": 4, "max_reconstruction": 12.5})
    assert InputPolicy.from_dict({**without.to_dict(), "version": 4}) == without  # a v4 policy without the check loads
    with pytest.raises(ValueError, match=r"one limit per error \('faint', 'background'\); got 1"):
        InputPolicy(max_reconstruction=[10.0], reconstruction_net=with_ae.reconstruction_net)
    with pytest.raises(ValueError, match="max_reconstruction needs the autoencoder"):
        InputPolicy(max_reconstruction=(10.0, 5.0))
    with pytest.raises(ValueError, match=r"redraws images of shape \(1, 28, 28\)"):
        InputPolicy(shape=(3, 32, 32), reconstruction_net=with_ae.reconstruction_net)


def test_callback_refuses_other_image_shapes_in_one_sentence():
    class Data:
        val_dataset = torch.utils.data.TensorDataset(torch.zeros(4, 1, 32, 32))

    class Trainer:
        datamodule = Data()

    class Module:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10))

    with pytest.raises(
        ConfigError, match=r"^--sponge.reconstruction: the autoencoder redraws 1x28x28 digits, the data's images are 1x32x32"
    ):
        SpongeCallback(reconstruction=True).setup(Trainer(), Module(), "fit")


@pytest.mark.slow
@pytest.mark.serving
def test_served_from_a_release_it_rejects_the_sponge_with_its_own_reason(tanh_policies, tmp_path):
    """checkpoint (SpongeCallback state) → `secure-ml export` → `secure-ml serve`: the autoencoder travels and answers."""
    from tests.helpers.serving import base_config, digit_body, post, release_of, running, write_checkpoint

    model, with_ae, _, xt = tanh_policies
    ckpt = write_checkpoint(tmp_path / "tanh.ckpt", model, callbacks={"SpongeCallback": {"policy": with_ae.to_dict()}})
    release = release_of(ckpt, tmp_path / "release")
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["input_policy"]["reconstruction_net"] == with_ae.reconstruction_net
    sponges = craft_sponges(model, xt[:16], steps=20, lr=0.01, objective="l0", optimizer="sign")
    sponge = sponges[[d.reason for d in with_ae.check_batch(sponges, model)].index("reconstruction")]
    with running(base_config(tmp_path), ckpt=release) as srv:
        assert srv.service.engine.policy == with_ae
        r = post(srv, digit_body(sponge))
        assert r.status_code == 422 and r.json()["reason"] == "reconstruction", r.text
        assert r.json()["detail"] == "the image does not resemble the inputs the policy was calibrated on"
        assert post(srv, digit_body(xt[1500])).status_code == 200


@pytest.mark.slow
def test_fit_calibrates_it_on_validation_digits_and_keeps_it_in_the_checkpoint_state(
    tiny_mnist, tmp_path, monkeypatch, autoencoder, ae_cache
):
    from secure_ml.callbacks import sponge as module
    from secure_ml.models import TanhCNN
    from secure_ml.module import SecureClassifier
    from tests.helpers.training import quiet_trainer, small_datamodule

    cb = SpongeCallback(n_sponges=4, craft_steps=3, calibration_samples=100, latency_repeats=1, reconstruction=True)
    cb.reconstruction_config, cb.reconstruction_cache_dir = SMALL, ae_cache  # the module's small autoencoder, from its cache
    estimated = []  # the checks whose leave-one-out false positives the callback logs
    real = module.leave_one_out_rejected
    monkeypatch.setattr(
        module, "leave_one_out_rejected", lambda scores, checks, *a: estimated.append(tuple(checks)) or real(scores, checks, *a)
    )
    trainer = quiet_trainer(tmp_path, callbacks=[cb])
    trainer.fit(SecureClassifier(net=TanhCNN()), small_datamodule(tiny_mnist, dp=False))
    assert cb.policy.max_reconstruction is not None and cb.policy.reconstruction_net == rec.encode(autoencoder)
    assert estimated and all(c[-1] == "reconstruction" for c in estimated)  # its false positives count in sponge/false_positive_rate
    restored = SpongeCallback()
    restored.load_state_dict(cb.state_dict())
    assert restored.policy == cb.policy
    plain = SpongeCallback(n_sponges=4, craft_steps=3, calibration_samples=100, latency_repeats=1)  # the default: no autoencoder
    quiet_trainer(tmp_path, callbacks=[plain]).fit(SecureClassifier(net=TanhCNN()), small_datamodule(tiny_mnist, dp=False))
    assert plain.policy.max_reconstruction is None and plain.policy.reconstruction_net is None


@pytest.mark.slow
def test_calibrating_at_start_up_keeps_the_artifacts_autoencoder(tanh_policies, real_data_dir):
    from secure_ml.serving.settings import PolicyConfig
    from secure_ml.serving.startup import build_policy

    model, with_ae, _, _ = tanh_policies
    cfg = PolicyConfig(calibrate=True, calibration_data_dir=str(real_data_dir), calibration_samples=800)
    policy, source = build_policy(cfg, model, with_ae.to_dict())
    assert policy.reconstruction_net == with_ae.reconstruction_net and policy.max_reconstruction is not None
    assert source.endswith("(with the artifact's autoencoder)")
    assert build_policy(cfg, model, None)[0].max_reconstruction is None  # nothing stored: nothing to keep
    ignore = PolicyConfig(calibrate=True, calibration_data_dir=str(real_data_dir), calibration_samples=800, from_checkpoint=False)
    assert build_policy(ignore, model, with_ae.to_dict())[0].reconstruction_net is None  # from_checkpoint: false is honoured
    with pytest.raises(ConfigError, match=r"^--ckpt_path: the stored input policy's autoencoder is invalid \(reconstruction_net must be"):
        build_policy(cfg, model, {**with_ae.to_dict(), "reconstruction_net": 12})  # an edited artefact: refused, not dropped
    # an artefact from before version 5 (one reconstruction limit): served as stored it is refused, naming the way out...
    v4 = {**with_ae.to_dict(), "version": 4, "max_reconstruction": 12.5}
    stored_only = PolicyConfig(calibrate=False)
    with pytest.raises(ConfigError, match=r"version-4 policy's reconstruction limit .* set policy.calibrate: true to recalibrate it"):
        build_policy(stored_only, model, v4)
    # ...which works: its autoencoder is kept and both errors get limits
    upgraded, _ = build_policy(cfg, model, v4)
    assert upgraded.reconstruction_net == with_ae.reconstruction_net and len(upgraded.max_reconstruction) == 2


@pytest.mark.slow
def test_any_input_dtype_and_concurrent_checks_leave_the_autoencoder_as_stored(tanh_policies):
    """float64 (what the service parses), half and float32 callers, also from several threads: same float32 weights, same decisions."""
    from concurrent.futures import ThreadPoolExecutor

    model, with_ae, _, xt = tanh_policies
    x = craft_sponges(model, xt[:8], steps=20, lr=0.01, objective="l0", optimizer="sign")
    x = torch.cat([x, xt[8:16]])
    decisions = [d.reason for d in with_ae.check_batch(x, model)]
    assert "reconstruction" in decisions and "ok" in decisions
    rec.reconstruction_error(with_ae.reconstruction_model(), x.half())  # a half-precision caller
    assert [d.reason for d in with_ae.check_batch(x.double(), model)] == decisions
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: with_ae.check(x[i % 16].to(torch.float64 if i % 2 else torch.float32), model).reason, range(64)))
    assert results == [decisions[i % 16] for i in range(64)]
    stored = rec.decode(with_ae.reconstruction_net).state_dict()
    assert all(torch.equal(v, stored[k]) and v.dtype == torch.float32 for k, v in with_ae.reconstruction_model().state_dict().items())


@pytest.mark.slow
def test_both_errors_are_compared_with_their_own_limit(tanh_policies):
    """A digit passes with generous limits; a tiny limit on either error alone rejects it with reason reconstruction."""
    model, with_ae, _, xt = tanh_policies
    digit = xt[:1]
    ((faint, background),) = rec.reconstruction_error(with_ae.reconstruction_model(), digit).tolist()
    assert faint > background > 0  # the background is a part of the faint pixels, and this digit has some of both

    def verdict(limits):
        d = {k: v for k, v in with_ae.to_dict().items() if k != "version"}
        return InputPolicy(**{**d, "max_reconstruction": limits}).check_batch(digit, model)[0]

    assert verdict((1e9, 1e9)).allowed
    assert verdict((faint * 0.5, 1e9)).reason == "reconstruction"
    assert verdict((1e9, background * 0.5)).reason == "reconstruction"  # the background limit is applied on its own


def test_asking_for_the_check_without_an_autoencoder_is_one_sentence(tanh_policies):
    model, _, _, xt = tanh_policies
    with pytest.raises(ValueError, match="^the reconstruction check needs an autoencoder: pass reconstruction_net$"):
        InputPolicy.calibrate(model, xt[:100], checks=("reconstruction",))
