"""Nets: plain ``nn.Module`` classifiers on pixel-space [0, 1] inputs, chosen with ``--model.net``.

Every class in ``__all__`` that is an ``nn.Module`` is a registered net (see :mod:`secure_ml.models.registry`):
it can be exported in a release artifact and served. A new net goes in its own file here and in ``__all__``.
"""

from secure_ml.models.registry import build_net, device_and_dtype, net_spec, registered_nets
from secure_ml.models.small_cnn import MNIST_MEAN, MNIST_STD, SmallCNN
from secure_ml.models.tanh_cnn import TanhCNN

__all__ = ["MNIST_MEAN", "MNIST_STD", "SmallCNN", "TanhCNN", "build_net", "device_and_dtype", "net_spec", "registered_nets"]
