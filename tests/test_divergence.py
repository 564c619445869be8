"""A run whose weights turn NaN stops with one sentence, and NaN weights are never evaluated.

Before: `secure-ml fit ... --model.dp.enabled false --model.optimizer.init_args.lr 1e6` trained the weights to NaN,
then the membership callback died in validation with a 30-line traceback (``member_scores contains NaN``), and
a run with validation off saved all-NaN checkpoints with exit 0.
"""

import pytest
import torch
from torch import nn

from secure_ml.cli import main
from secure_ml.models import SmallCNN
from secure_ml.models.probe import describe_nonfinite, nonfinite_parameters
from tests.helpers.data import smoke_args


def test_nonfinite_parameters_names_each_bad_tensor():
    net = SmallCNN()
    assert nonfinite_parameters(net) == []  # the control
    with torch.no_grad():
        net.conv1.weight[0, 0, 0, 0] = float("nan")
        net.fc2.bias[3] = float("-inf")
    bad = nonfinite_parameters(net)
    assert bad == ["conv1.weight", "fc2.bias"]
    assert describe_nonfinite(bad) == "conv1.weight and 1 more parameter"
    assert describe_nonfinite(bad[:1]) == "conv1.weight"
    assert nonfinite_parameters(nn.ReLU()) == []
    huge = SmallCNN()
    with torch.no_grad():
        huge.fc1.weight.fill_(1e36)  # finite, though its sum overflows: the fast path's sum must not condemn it
    assert nonfinite_parameters(huge) == []


def _fit(tiny_mnist, tmp_path, *extra):
    return smoke_args(tiny_mnist, "--model.dp.enabled", "false", "--trainer.default_root_dir", str(tmp_path), *extra)


@pytest.mark.slow
@pytest.mark.parametrize("validate", [True, False], ids=["with-validation", "validation-off"])
def test_a_diverging_fit_stops_in_one_line_and_saves_nothing(tiny_mnist, tmp_path, capsys, validate):
    extra = [] if validate else ["--trainer.limit_val_batches", "0"]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *_fit(tiny_mnist, tmp_path, "--model.optimizer.init_args.lr", "1e6", *extra)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert err[-1].startswith("secure-ml: error: training diverged: after step ") and "--model.optimizer.init_args.lr, now 1e+06" in err[-1]
    text = "\n".join(err)  # (pytest's capture may add "--- Logging error ---" noise from an earlier test's handler)
    assert text.count("training diverged") == 1 and "contains NaN" not in text  # no traceback of ours, none of a callback's
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_nan_weights_are_refused_before_test_and_predict(tiny_mnist, tmp_path, capsys):
    main(["fit", *_fit(tiny_mnist, tmp_path)])  # the control: a sane learning rate trains and saves
    ckpt = next(tmp_path.rglob("last.ckpt"))
    test_args = _fit(tiny_mnist, tmp_path, "--ckpt_path", str(ckpt))
    main(["test", *test_args])  # the control: the finite checkpoint is tested
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["net.fc1.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(state, bad)
    capsys.readouterr()
    for command in ("test", "predict", "validate"):
        with pytest.raises(SystemExit) as exc:
            main([command, *_fit(tiny_mnist, tmp_path, "--ckpt_path", str(bad))])
        assert exc.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line == "secure-ml: error: --ckpt_path: the checkpoint's weights are not finite (NaN or infinity in fc1.weight)", line
    with pytest.raises(SystemExit):  # resuming it is refused as well
        main(["fit", *_fit(tiny_mnist, tmp_path, "--ckpt_path", str(bad), "--trainer.max_epochs", "3")])
    assert "the checkpoint's weights are not finite" in capsys.readouterr().err
