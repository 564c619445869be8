"""Run in a fresh interpreter (torch not loaded): start the sanitizer prefetch for ARGV, then report what it gives.

    python -m tests.helpers.prefetch_probe MODE ARGV_JSON DATA_JSON

``DATA_JSON`` holds the data settings the "real" DataModule uses (data_dir, train_size, val_size, seed). Modes:

* ``claim``: build the sanitizer's input from DATA_JSON, claim the child's detection and compare every field with a
  detection computed here; ``nodigest`` does the same with the digest check disabled in parent and child (the negative
  control: a guess from other settings is then taken);
* ``datamodule``: set the DataModule up and report its sanitization report's ``prefetched`` flag and summary;
* ``exit``: print the child's pid and exit without claiming (the child must be gone when the interpreter is);
  ``killed``: the same, then SIGKILL itself (no exit handlers run); ``forkfail``: ``os.fork`` refuses (EAGAIN);
* ``fork``: a process forked after ``start`` tries to claim (it must get nothing).
"""

import json
import os
import sys

from secure_ml import prefetch


def main() -> None:
    mode, argv, data = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    if mode == "nodigest":
        prefetch.digest = lambda *args: b"same"  # before the fork: the child inherits it
    fds = len(os.listdir("/proc/self/fd"))
    if mode == "killed":  # a child that would outlive its parent by a minute if nothing killed it
        prefetch._child = lambda settings, out: __import__("time").sleep(60)
    if mode == "forkfail":
        os.fork = lambda: (_ for _ in ()).throw(BlockingIOError(11, "Resource temporarily unavailable"))
    prefetch.start(argv)
    child = prefetch._pending
    out = {"child": child.pid if child else None, "fds_leaked": len(os.listdir("/proc/self/fd")) - fds - (1 if child else 0)}
    if mode in ("exit", "forkfail", "killed"):
        print(json.dumps(out), flush=True)
        if mode == "killed":  # no exit handlers: only the child's death signal can end it
            os.kill(os.getpid(), 9)
        return
    import numpy as np
    import torch

    from secure_ml.data.label_noise import detect_label_flips
    from secure_ml.data.mnist import load_mnist
    from secure_ml.data.poisoning import PoisonConfig
    from secure_ml.data.sanitization import SanitizerConfig, detector_args
    from secure_ml.data.training_part import training_part

    cfg = SanitizerConfig(method="confident_knn")
    x, y = load_mnist(data["data_dir"], train=True, download=False)
    part = training_part(y, data["train_size"], data["val_size"], data["seed"], PoisonConfig(rate=0.1, target_label=0))
    images, labels, args = x[part.train_idx], part.labels, detector_args(cfg)
    if mode == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0 if prefetch.claim(images, labels, args) is None else 1)
        out["forked_claim_refused"] = os.waitpid(pid, 0)[1] == 0
        out["parent_claimed"] = prefetch.claim(images, labels, args) is not None
    elif mode == "datamodule":
        from secure_ml.data.datamodule import MNISTDataModule

        dm = MNISTDataModule(**data, test_size=100, download=False, poison=PoisonConfig(rate=0.1, target_label=0), sanitizer=cfg)
        dm.setup("validate")
        out["prefetched"], out["summary"] = dm.sanitization_report.prefetched, dm.sanitization_report.summary()
    else:
        found = prefetch.claim(images, labels, args)
        local = detect_label_flips(images, labels, *args)
        out["claimed"] = found is not None
        out["same"] = found is not None and (
            torch.equal(found.flagged, local.flagged)
            and torch.equal(found.proposed, local.proposed)
            and np.array_equal(found.pair_rates, local.pair_rates)
            and found.noisy_pairs == local.noisy_pairs
        )
        out["flagged"] = len(local.flagged)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
