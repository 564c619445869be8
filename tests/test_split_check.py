"""The checkpoint's member/non-member split check: still refuses a different split, no longer a membership oracle."""

import hashlib
import pickle
import secrets
import stat
import warnings

import pytest
import torch

from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig
from secure_ml.data.canaries import CanaryConfig
from secure_ml.data.split_key import key_id, load_or_create_key, split_tag
from secure_ml.errors import ConfigError


@pytest.fixture(autouse=True)
def _key_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SECURE_ML_KEY_DIR", str(tmp_path / "keys"))
    return tmp_path / "keys"


def _dm(root, stage="fit", **kw):
    kw.setdefault("train_size", 500)
    kw.setdefault("val_size", 100)
    kw.setdefault("test_size", 150)
    kw.setdefault("poison", PoisonConfig(rate=0.1, target_label=0))
    kw.setdefault("sanitizer", SanitizerConfig(method="knn"))
    dm = MNISTDataModule(data_dir=str(root), download=False, **kw)
    dm.setup(stage)
    return dm


def old_digest(parts) -> str:
    """The scheme main shipped: 16 hex digits of SHA-256 over (validation rows, member rows, member labels, test rows)."""
    digest = hashlib.sha256()
    for t in parts:
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def _worlds(dm, target: int):
    """The attacker knows every record but member ``target``: the split with it (the truth), without it, and with its label changed."""
    val, members, labels, test = dm._split
    keep = torch.ones(len(members), dtype=torch.bool)
    keep[target] = False
    relabelled = labels.clone()
    relabelled[target] = (labels[target] + 1) % 10
    return {
        "member": (val, members, labels, test),
        "non-member": (val, members[keep], labels[keep], test),
        "other label": (val, members, relabelled, test),
    }


def _decides(stored: str, recompute, worlds) -> set:
    """The worlds whose recomputed value equals the stored one: one world means the attacker knows the truth."""
    return {name for name, parts in worlds.items() if recompute(parts) == stored}


def test_negative_control_the_old_digest_decides_membership_and_labels(tiny_mnist):
    dm = _dm(tiny_mnist)
    worlds = _worlds(dm, target=17)
    stored = old_digest(dm._split)  # what main's checkpoint carried
    assert _decides(stored, old_digest, worlds) == {"member"}  # membership and the label both recovered with certainty
    # ...and for a record that is not a member, the attack says so.
    assert _decides(old_digest(worlds["non-member"]), old_digest, worlds) == {"non-member"}


def test_the_keyed_tag_decides_nothing_without_the_key(tiny_mnist, _key_dir):
    dm = _dm(tiny_mnist)
    state = dm.state_dict()
    assert set(state) == {"split_check"} and set(state["split_check"]) == {"key_id", "tag"}
    stored = state["split_check"]["tag"]
    worlds = _worlds(dm, target=17)
    # Everything the checkpoint holder can compute without the key matches no world: the attack decides nothing.
    attacker = [
        old_digest,
        lambda parts: split_tag(b"", parts),
        lambda parts: split_tag(state["split_check"]["key_id"].encode(), parts),
        lambda parts: split_tag(secrets.token_bytes(32), parts),
    ]
    for recompute in attacker:
        assert _decides(stored, recompute, worlds) == set()
    # The tag still separates the worlds for the key holder (that is what the split check uses)...
    key = (_key_dir / "split.key").read_bytes()
    assert _decides(stored, lambda parts: split_tag(key, parts), worlds) == {"member"}
    # ...so the key must never travel: not in the checkpoint state, and its file is private.
    blob = pickle.dumps(state)
    assert key not in blob and key.hex().encode() not in blob and key_id(key) == state["split_check"]["key_id"]
    assert stat.S_IMODE((_key_dir / "split.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(_key_dir.stat().st_mode) == 0o700


def test_split_check_refuses_a_different_split(tiny_mnist):
    state = _dm(tiny_mnist).state_dict()
    _dm(tiny_mnist).load_state_dict(state)  # the same --data.* options: accepted
    for other in (dict(val_size=50), dict(sanitizer=SanitizerConfig(method="none")), dict(poison=PoisonConfig(rate=0.1, target_label=3))):
        with pytest.raises(ConfigError, match="different data split"):
            _dm(tiny_mnist, **other).load_state_dict(state)
    # Lightning may restore the datamodule before setup: then the check runs at the end of setup.
    late = MNISTDataModule(data_dir=str(tiny_mnist), download=False, train_size=500, val_size=50, test_size=150)
    late.load_state_dict(state)
    with pytest.raises(ConfigError, match="different data split"):
        late.setup("test")


def test_without_the_key_the_check_is_skipped_with_one_line(tiny_mnist, tmp_path, monkeypatch, _key_dir):
    state = _dm(tiny_mnist).state_dict()
    monkeypatch.setenv("SECURE_ML_KEY_DIR", str(tmp_path / "elsewhere"))  # another machine: no key file
    with pytest.warns(UserWarning, match=r"split check skipped.*--data.split_key") as caught:
        _dm(tiny_mnist, "test", val_size=50).load_state_dict(state)  # a different split, but it cannot be checked
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert not (tmp_path / "elsewhere" / "split.key").exists()  # test/validate never create a key
    # Handing over the training machine's key file restores the check.
    with pytest.raises(ConfigError, match="different data split"):
        _dm(tiny_mnist, "test", val_size=50, split_key=str(_key_dir / "split.key")).load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dm(tiny_mnist, "test", split_key=str(_key_dir / "split.key")).load_state_dict(state)


def test_a_wrong_key_named_on_purpose_is_refused_not_skipped(tiny_mnist, tmp_path, _key_dir):
    """``--data.split_key <another 0600 key>`` warned and reported on whatever split the flags gave, exit 0 (probe 2)."""
    state = _dm(tiny_mnist).state_dict()
    other = tmp_path / "other" / "split.key"
    other.parent.mkdir()
    load_or_create_key(other)
    with pytest.raises(ConfigError, match=r"^--data.split_key .*other/split.key holds key id \w+, but this checkpoint's split was tagged"):
        _dm(tiny_mnist, "test", split_key=str(other)).load_state_dict(state)


def test_old_checkpoints_warn_and_bad_key_files_are_refused(tiny_mnist, _key_dir):
    with pytest.warns(UserWarning, match="predates keyed split checks"):
        _dm(tiny_mnist).load_state_dict({"fingerprint": "0123456789abcdef"})
    key = load_or_create_key(_key_dir / "split.key")
    assert load_or_create_key(_key_dir / "split.key") == key and len(key) == 32  # created once, then reused
    (_key_dir / "split.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _dm(tiny_mnist).state_dict()
    (_key_dir / "split.key").chmod(0o600)
    (_key_dir / "split.key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="32-byte key"):
        _dm(tiny_mnist).state_dict()
    (_key_dir / "dir.key").mkdir(mode=0o755)  # was told to `chmod 600` the directory (e.g. /tmp)
    with pytest.raises(ConfigError, match="is a directory"):
        load_or_create_key(_key_dir / "dir.key")


def test_split_check_covers_the_canaries_and_brings_back_secret_ones(tiny_mnist):
    trained = _dm(tiny_mnist, canaries=CanaryConfig(count=40))  # a secret canary seed, as in configs/audit.yaml
    state, seed = trained.state_dict(), trained.canary_set.seed
    assert state["split_check"]["canaries"] == {"seed": seed, "count": 40, "kind": "border"}
    labels = trained.train_dataset.tensors[1]
    assert len(labels) > len(trained._real_train)  # some canaries were included
    after = _dm(tiny_mnist, "test", canaries=CanaryConfig(count=40))  # test draws a new secret seed, then the checkpoint is restored
    assert after.canary_set.seed != seed
    after.load_state_dict(state)
    before = MNISTDataModule(data_dir=str(tiny_mnist), download=False, train_size=500, val_size=100, test_size=150)
    before.poison, before.sanitizer = PoisonConfig(rate=0.1, target_label=0), SanitizerConfig(method="knn")
    before.load_state_dict(state)  # restored before setup: checked (and the canaries adopted) at the end of setup
    before.setup("test")
    for dm in (after, before):
        assert dm.canary_set.seed == seed and torch.equal(dm.train_dataset.tensors[1], labels)
    _dm(tiny_mnist, canaries=CanaryConfig(count=40, seed=seed)).load_state_dict(state)  # the same pinned seed: accepted
    for other in (CanaryConfig(count=40, seed=seed + 1), CanaryConfig(count=41, seed=seed)):  # other canaries, same digits: refused
        with pytest.raises(ConfigError, match="different data split"):
            _dm(tiny_mnist, canaries=other).load_state_dict(state)
