"""Candidate nets for the search (plain nn.Modules on [0, 1] pixels; the chosen ones move to secure_ml/models)."""

from torch import nn

MEAN, STD = 0.1307, 0.3081


class Norm(nn.Module):
    def forward(self, x):
        return (x - MEAN) / STD


def act(name):
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "elu": nn.ELU(), "gelu": nn.GELU()}[name]


def small_cnn(a="tanh", c1=16, c2=32, h=128, gn=0):
    layers = [Norm(), nn.Conv2d(1, c1, 3, padding=1)]
    if gn:
        layers.append(nn.GroupNorm(gn, c1))
    layers += [act(a), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 3, padding=1)]
    if gn:
        layers.append(nn.GroupNorm(gn, c2))
    layers += [act(a), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c2 * 49, h), act(a), nn.Linear(h, 10)]
    return nn.Sequential(*layers)


def papernot(a="tanh", c1=16, c2=32, h=32):
    """The tempered-sigmoid net of Papernot et al. 2021 / Tramer & Boneh 2021 for MNIST."""
    return nn.Sequential(
        Norm(),
        nn.Conv2d(1, c1, 8, stride=2, padding=2),
        act(a),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(c1, c2, 4, stride=2),
        act(a),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(c2 * 16, h),
        act(a),
        nn.Linear(h, 10),
    )


def build(name):
    parts = name.split("_")
    kind, kw = parts[0], {}
    for p in parts[1:]:
        if p in ("relu", "tanh", "elu", "gelu"):
            kw["a"] = p
        elif p.startswith("gn"):
            kw["gn"] = int(p[2:])
        elif p.startswith("c1x"):
            kw["c1"] = int(p[3:])
        elif p.startswith("c2x"):
            kw["c2"] = int(p[3:])
        elif p.startswith("h"):
            kw["h"] = int(p[1:])
    if kind == "cnn":
        return small_cnn(**kw)
    if kind == "pap":
        return papernot(**kw)
    raise ValueError(name)
