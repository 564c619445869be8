"""The input policy's ``reconstruction`` check: how badly a small autoencoder of digit shapes redraws the image.

An autoencoder trained to redraw digits redraws digits well and everything else badly (MagNet, Meng & Chen,
CCS 2017, uses this error to reject adversarial inputs). The input policy bounds the per-image L1 error on
two sets of pixels, each at its own clean spread (policy version 5; the input policy holds the two like the
per-layer checks, ``max_l (error_l − median_l) / (q99_l − median_l)``, one limit for the pair):

* **faint** pixels, ``Σ |AE(x) − x| · [x < 0.3]`` (version 4's only error): a sponge crafted from noise or from a
  digit adds faint ink the autoencoder does not redraw;
* **background** pixels, ``Σ |AE(x) − x| · [x < 0.3 and AE(x) < 0.2]``: faint in the image *and* in its redrawing.
  The rims of the strokes the autoencoder blurs (AE(x) ≥ 0.2) add clean spread to the faint error without telling
  sponges apart, so without them the faint ink of sponges from digits stands out more; alone it misses sponges from
  noise (their redrawing is grey, so almost no pixel counts), hence the pair.

The activation statistics of those sponges on a tanh net stay inside the clean range (docs/dev/sponge.md,
"Reconstruction"). Why faint pixels at all: the strokes (x ≥ 0.3) are where clean digits vary most between writers
and where the autoencoder redraws least exactly. 0.3 was chosen among 0.2 / 0.3 / 0.5 and the whole-image error on
the sponges of one hardened checkpoint (h2); the background error and its 0.2 among background-only masks on h6
(docs/dev/sponge.md has both comparisons).

Privacy: the autoencoder is trained on procedural digits only (:mod:`secure_ml.data.procedural`): no record of
any dataset is read, so it ships in the checkpoint, the release artefact and the served policy at no privacy
cost. It is deterministic given its :class:`ReconstructionConfig` (seeded generator) and cached on disk by a
hash of that config and the generator's version, like the DP prior.

Its weights travel inside the policy dict as base64 of a safetensors blob (:func:`encode` / :func:`decode`):
raw float tensors, no pickle, no code. Hand-written because no maintained library ships a MagNet-style
detector for arbitrary PyTorch pipelines (ART's detectors wrap their own estimators and train on the data).
"""

import base64
import binascii
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from secure_ml.errors import ConfigError

MAX_TEXT = 1 << 19  # base64 characters decode() reads at most (this version's weights: ≈ 103,000)
ARCH_VERSION = 1  # bump on any change to ReconstructionNet (cached weights are keyed by it)
SHAPE = (1, 28, 28)
FAINT = 0.3  # pixels below this (background and the rims of strokes) count towards the faint error...
BACKGROUND = 0.2  # ...and towards the background error when their reconstruction is below this too
ERRORS = ("faint", "background")  # the columns of reconstruction_error


class ReconstructionNet(nn.Module):
    """conv(1→32, 3x3) → ReLU → maxpool 2 → conv(32→32) → ReLU → upsample 2 → conv(32→32) → ReLU → conv(32→1) → sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class ReconstructionConfig:
    """Training of the autoencoder on procedural digits.

    Args:
        digits: procedural digits drawn.
        epochs: passes over them.
        batch_size: minibatch size.
        lr: Adam's learning rate.
        seed: seed of the digits, the initial weights and the batch order (no privacy role: no private data is involved).
    """

    digits: int = 8000
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("digits", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--sponge.reconstruction_{name} must be an integer >= 1; got {v!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError(f"--sponge.reconstruction_lr must be in (0, 1); got {self.lr!r}")


def reconstruction_error(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-image L1 errors (:data:`ERRORS`), shape ``(B, 2)``, float32, differentiable in ``x`` (the masks are indicators):
    on the faint pixels ``Σ |net(x) − x| · [x < FAINT]`` and on the background ``Σ |net(x) − x| · [x < FAINT and net(x) < BACKGROUND]``.

    The autoencoder stays float32 (its weights are never cast: a half-precision call would round them for
    good, and concurrent callers would race on the dtype); ``x`` is cast to float32 instead.
    """
    x = x.to(torch.float32)
    r = net(x)
    error, faint = (r - x).abs(), x < FAINT
    background = faint & (r.detach() < BACKGROUND)
    return torch.stack([(error * faint.to(x.dtype)).flatten(1).sum(1), (error * background.to(x.dtype)).flatten(1).sum(1)], 1)


def train(cfg: ReconstructionConfig, log: Optional[Callable[[str], None]] = None) -> ReconstructionNet:
    """A :class:`ReconstructionNet` trained (MSE, Adam) on ``cfg.digits`` procedural digits; deterministic given ``cfg``."""
    from secure_ml.data.procedural import procedural_digits  # here, not at the top: secure_ml.data imports Lightning, serving must not

    g = torch.Generator().manual_seed(cfg.seed)
    x = procedural_digits(cfg.digits, g)[0].reshape(-1, *SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = ReconstructionNet()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), cfg.batch_size):
            xb = x[order[i : i + cfg.batch_size]]
            loss = (net(xb) - xb).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if log is not None:
            log(f"reconstruction: epoch {epoch + 1}/{cfg.epochs}, last loss {loss.item():.5f}")
    return net.eval().requires_grad_(False)


def _blob(net: ReconstructionNet) -> bytes:
    """The weights as a safetensors blob (the cache file's content)."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})


def encode(net: ReconstructionNet) -> str:
    """The weights as base64 text of a safetensors blob (what the policy dict stores)."""
    return base64.b64encode(_blob(net)).decode("ascii")


def decode(text: str) -> ReconstructionNet:
    """Inverse of :func:`encode`; ValueError in one sentence for anything that is not such weights."""
    if not isinstance(text, str):
        raise ValueError(f"reconstruction_net must be base64 text of safetensors weights; got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ValueError(f"reconstruction_net is longer than this version's autoencoder weights ({len(text)} characters)")
    try:
        state = st_load(base64.b64decode(text.encode("ascii"), validate=True))
        net = ReconstructionNet()
        net.load_state_dict(state, strict=True)
    except (binascii.Error, UnicodeEncodeError, SafetensorError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ValueError(f"reconstruction_net is not this version's autoencoder weights ({reason})") from None
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise ValueError("reconstruction_net holds non-finite weights")
    return net.eval().requires_grad_(False)


def cache_key(cfg: ReconstructionConfig) -> str:
    """Hash of everything the trained weights depend on: generator and architecture versions, settings, torch version."""
    from secure_ml.data.procedural import VERSION  # see train()

    text = f"procedural-v{VERSION}|arch-v{ARCH_VERSION}|{sorted(asdict(cfg).items())}|torch-{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_or_train(cfg: ReconstructionConfig, cache_dir: Optional[str], log: Optional[Callable[[str], None]] = None) -> ReconstructionNet:
    """The autoencoder for ``cfg`` from ``cache_dir`` (safetensors) or trained now (and stored there); ``None`` dir: no cache."""
    path = Path(os.path.expanduser(cache_dir)) / f"reconstruction-{cache_key(cfg)}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        try:
            net = decode(base64.b64encode(path.read_bytes()).decode("ascii"))  # one validating path for cache and policy
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the cached autoencoder '{path}' cannot be loaded ({exc}); delete it or set --sponge.reconstruction_cache_dir elsewhere"
            ) from None
        if log is not None:
            log(f"secure-ml: reconstruction autoencoder from cache ({path})")
        return net
    net = train(cfg, log)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_blob(net))
        tmp.replace(path)
    if log is not None:
        log(f"secure-ml: reconstruction autoencoder trained on {cfg.digits} procedural digits ({path or 'not cached'})")
    return net
