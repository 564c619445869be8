import pytest
import torch

from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig, detection_scores, flip_labels, sanitize
from secure_ml.data.mnist import load_mnist
from secure_ml.errors import ConfigError, DataNotFoundError


@pytest.fixture(autouse=True)
def _private_key_dir(tmp_path, monkeypatch):
    """setup("fit") finds or creates the split key: keep it out of the user's home."""
    monkeypatch.setenv("SECURE_ML_KEY_DIR", str(tmp_path / "keys"))


def _dm(root, **kw):
    kw.setdefault("train_size", 500)
    kw.setdefault("val_size", 100)
    kw.setdefault("test_size", 150)
    return MNISTDataModule(data_dir=str(root), download=False, **kw)


def test_load_mnist_reads_idx_as_pixels(tiny_mnist):
    x, y = load_mnist(str(tiny_mnist), train=True, download=False)
    assert x.shape == (600, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= set(range(10))


def test_missing_data_is_one_clear_sentence(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"MNIST/raw.*--data.data_dir"):
        load_mnist(str(tmp_path / "nothing"), train=True, download=False)


def _corrupt(root, name, edit):
    """Rewrite ``root/MNIST/raw/name`` through ``edit(bytes) -> bytes``."""
    path = root / "MNIST" / "raw" / name
    path.write_bytes(edit(path.read_bytes()))


def test_mismatched_label_file_is_refused(tiny_mnist):
    """The test split's labels in place of the training split's: 200 labels for 600 images. torchvision reads the files
    apart, so unchecked, the datamodule trained image i on the test split's label i (exit 0)."""
    raw = tiny_mnist / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataNotFoundError, match=r"train-labels-idx1-ubyte .* holds 200 labels for the 600 images"):
        load_mnist(str(tiny_mnist), train=True, download=False)
    load_mnist(str(tiny_mnist), train=False, download=False)  # control: the untouched split still loads


def test_out_of_range_labels_are_refused(tiny_mnist):
    """A label byte of 200 (corruption): before, cleanlab's traceback inside the sanitizer."""
    _corrupt(tiny_mnist, "train-labels-idx1-ubyte", lambda b: b[:8] + bytes([200]) + b[9:])  # the first label
    with pytest.raises(DataNotFoundError, match=r"labels outside 0-9 \(e.g. 200, 1 in all\)"):
        load_mnist(str(tiny_mnist), train=True, download=False)


def test_unreadable_files_say_so_not_missing(tiny_mnist):
    """A truncated images file is there but unreadable: the sentence says so instead of 'MNIST was not found'."""
    _corrupt(tiny_mnist, "train-images-idx3-ubyte", lambda b: b[: len(b) // 2])
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte / train-labels-idx1-ubyte in .* could not be read"):
        load_mnist(str(tiny_mnist), train=True, download=False)


def test_a_missing_file_of_the_other_split_is_named(tiny_mnist):
    """torchvision checks all four files: a missing t10k labels file was reported as the *train* files being unreadable."""
    (tiny_mnist / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    for train in (True, False):
        with pytest.raises(DataNotFoundError, match=r"^MNIST's raw file t10k-labels-idx1-ubyte is missing from .* put it back"):
            load_mnist(str(tiny_mnist), train=train, download=False)
    (tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"^MNIST's raw files train-images-idx3-ubyte, t10k-labels-idx1-ubyte are missing"):
        load_mnist(str(tiny_mnist), train=True, download=False)


def test_subsets_are_reproducible_and_disjoint(tiny_mnist):
    a, b, c = _dm(tiny_mnist), _dm(tiny_mnist), _dm(tiny_mnist, seed=7)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert torch.equal(a.test_dataset.tensors[1], b.test_dataset.tensors[1])
    assert not torch.equal(a.train_dataset.tensors[0], c.train_dataset.tensors[0])
    assert len(a.train_dataset) == 400 and len(a.val_dataset) == 100 and len(a.test_dataset) == 150
    # validation digits are never training members
    train = {t.numpy().tobytes() for t in a.train_dataset.tensors[0]}
    assert not any(v.numpy().tobytes() in train for v in a.val_dataset.tensors[0])


def test_flip_to_target_is_exact():
    labels = torch.arange(1000) % 10
    new, idx = flip_labels(labels, 0.1, target_label=0, generator=torch.Generator().manual_seed(1))
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.all(labels[idx] != 0) and torch.all(new[idx] == 0)
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(new[untouched], labels[untouched])


def test_flip_to_random_other_class():
    labels = torch.arange(1000) % 10
    new, idx = flip_labels(labels, 0.25, target_label=None, generator=torch.Generator().manual_seed(2))
    assert len(idx) == 250
    assert torch.all(new[idx] != labels[idx])
    assert (new != labels).sum() == 250
    assert len(new[idx].unique()) == 10


def test_datamodule_poisons_only_training_part(tiny_mnist):
    dm = _dm(tiny_mnist, poison=PoisonConfig(rate=0.2, target_label=3))
    dm.setup("fit")
    clean = _dm(tiny_mnist)
    clean.setup("fit")
    assert len(dm.poisoned_indices) == 80
    assert torch.equal(dm.val_dataset.tensors[1], clean.val_dataset.tensors[1])
    diff = torch.nonzero(dm.train_dataset.tensors[1] != clean.train_dataset.tensors[1]).squeeze(1)
    assert torch.equal(diff, dm.poisoned_indices)


def test_detection_scores_exact():
    p, r, f = detection_scores(torch.tensor([1, 2, 3, 4]), torch.tensor([3, 4, 5, 6, 7, 8]))
    assert (p, r) == (0.5, pytest.approx(2 / 6))
    assert f == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def _clusters(n_per=50, seed=0):
    """Ten well-separated pixel clusters: a label-aware detector can find flips exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per)
    images = torch.rand(len(labels), 1, 28, 28, generator=g) * 0.05
    for k in range(10):
        images[labels == k, 0, 2 * k : 2 * k + 3, :] = 1.0
    return images, labels


def test_knn_sanitizer_finds_flips_isolation_forest_cannot():
    images, labels = _clusters(n_per=100)
    poisoned_labels, idx = flip_labels(labels, 0.05, target_label=0, generator=torch.Generator().manual_seed(3))
    _x, y, kept, rep = sanitize(images, poisoned_labels, SanitizerConfig(method="knn"), idx)
    assert rep.precision == 1.0 and rep.recall >= 0.95
    assert rep.removed == len(rep.flagged) and len(y) == 1000 - rep.removed
    assert (y != labels[kept]).sum() == round(len(idx) * (1 - rep.recall))  # only missed flips remain
    _, _, _, base = sanitize(images, poisoned_labels, SanitizerConfig(method="isolation_forest"), idx)
    assert base.f1 < 0.5


def test_knn_relabel_restores_true_labels():
    images, labels = _clusters(n_per=100)
    poisoned_labels, idx = flip_labels(labels, 0.05, target_label=None, generator=torch.Generator().manual_seed(4))
    _x, y, _kept, rep = sanitize(images, poisoned_labels, SanitizerConfig(method="knn", action="relabel"), idx)
    assert len(y) == len(labels) and rep.removed == 0 and rep.relabelled >= 48
    assert (y != labels).sum() <= 2


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(poison=dict(rate=1.5)), "--data.poison.rate"),
        (dict(sanitizer=dict(method="magic")), "--data.sanitizer.method"),
        (dict(sanitizer=dict(k=0)), "--data.sanitizer.k"),
        (dict(sanitizer=dict(method="isolation_forest", action="relabel")), "--data.sanitizer.action"),
    ],
)
def test_bad_data_config_names_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        if "poison" in kwargs:
            PoisonConfig(**kwargs["poison"])
        else:
            SanitizerConfig(**kwargs["sanitizer"])


def test_sizes_validated(tiny_mnist):
    with pytest.raises(ConfigError, match="--data.train_size"):
        _dm(tiny_mnist, train_size=10_000).setup("fit")
    with pytest.raises(ConfigError, match="--data.val_size"):
        _dm(tiny_mnist, train_size=100, val_size=100)
    with pytest.raises(ConfigError, match="--data.val_size"):
        _dm(tiny_mnist, val_size=1)
    with pytest.raises(ConfigError, match="--data.batch_size"):
        _dm(tiny_mnist, batch_size=0)


def test_datamodule_runs_confident_knn_on_its_training_part(tmp_path):
    from tests.helpers.data import write_idx
    from tests.helpers.segments import segment_digits

    raw = tmp_path / "MNIST" / "raw"
    for prefix, n, seed in (("train", 700, 0), ("t10k", 50, 1)):
        x, y = segment_digits(n, seed)
        write_idx(raw, prefix, (x[:, 0] * 255).round().to(torch.uint8).numpy(), y.to(torch.uint8).numpy())
    dm = _dm(
        tmp_path,
        train_size=700,
        test_size=50,
        poison=PoisonConfig(rate=0.1, target_label=0),
        sanitizer=SanitizerConfig(method="confident_knn"),
    )
    dm.setup("fit")
    rep = dm.sanitization_report
    assert (rep.precision, rep.recall) == (1.0, 1.0) and rep.removed == 60
    assert len(dm.train_dataset) == 540 and set(dm.kept_indices.tolist()).isdisjoint(dm.poisoned_indices.tolist())
