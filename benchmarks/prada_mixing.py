"""Does the extraction detector (PRADA) stop an attacker who mixes natural digits into its queries?

    python benchmarks/prada_mixing.py [--budget 1500] [--mix 0 1] [--quota 500] [--data-dir ../shared/data]

Starts the service in-process (the tests' small SmallCNN checkpoint, 2,000 training digits; the shipped
``extraction`` defaults: action block, N = 200 distances, δ = 0.92) and runs, one fresh service per arm and one
API key each:

* ``mix 0``: Jacobian-augmentation extraction (``secure-ml extract``'s attack) alone, ``--budget`` synthetic queries;
* ``mix k``: the same, with ``k`` natural digits (training-split digits 2,000 onwards, which the model never saw)
  sent before each synthetic query, from the same key (Atli et al. 2020: PRADA's known weakness);
* ``natural``: the natural digits alone, as many as the ``mix 1`` arm sent: what a holder of natural digits copies
  without any synthetic query.

With ``--quota N`` every arm runs again on a service whose detector also has the ``rate`` signal set as a per-key
quota (``extraction.rate_max_queries: N``, ``rate_window_s: 86400``, action block): what bounds the mixing attacker
that PRADA does not see.

Prints per arm: queries answered, whether and when the key was refused, and the agreement with the served model on
1,000 held-out test digits of a copy trained on every label the arm received.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from secure_ml.attacks.extraction import agreement, steal, train_copy  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.tools.http_client import HttpOracle  # noqa: E402
from tests.helpers.serving import KEY_A, base_config, running, trained_checkpoint  # noqa: E402


def arm(mix, budget, seeds, natural, natural_only=False, quota=None):
    """One fresh service, one key: ``(labels answered, query refused at or None, queried images, their labels)``.
    ``quota``: the detector's ``rate`` signal as a per-key quota, ``quota`` queries a day (``rate_window_s`` 86400)."""
    extraction = {} if quota is None else {"rate_max_queries": quota, "rate_window_s": 86400.0}
    with tempfile.TemporaryDirectory() as tmp, running(base_config(Path(tmp), extraction=extraction)) as srv:
        oracle = HttpOracle(srv.url, KEY_A, 0, time.monotonic() + 1800)
        nat, xs, ys, stop = iter(natural), [], [], {"refused_at": None, "n": 0}

        def ask(x):
            a = oracle(x)
            stop["n"] += 1
            if a is not None and a.label is not None:
                xs.append(x)
                ys.append(a.label)
            elif stop["refused_at"] is None:
                stop["refused_at"] = stop["n"]
            return a

        def mixed(q):
            for _ in range(mix):
                a = ask(next(nat))
                if a is None or a.label is None:
                    return a
            return ask(q)

        if natural_only:
            for x in natural[:budget]:
                a = ask(x)
                if a is None or a.label is None:
                    break
        else:
            steal(mixed, seeds, budget, "jacobian", 0.1, 0.1, 5, 0)
        oracle.close()
    return len(ys), stop["refused_at"], xs, ys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=1500, help="synthetic queries per arm")
    ap.add_argument("--mix", type=int, nargs="+", default=[0, 1], help="natural digits before each synthetic query, per arm")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--quota", type=int, default=None, help="also the rate signal as a per-key quota: this many queries a day")
    a = ap.parse_args()
    torch.set_num_threads(1)
    test_x, _ = load_mnist(a.data_dir, train=False, download=False)
    train_x, _ = load_mnist(a.data_dir, train=True, download=False)
    seeds, eval_x, natural = test_x[:100], test_x[1000:2000], train_x[2000:]
    from secure_ml.serving.startup import load_served_model

    real = load_served_model(str(trained_checkpoint()), "cpu").model
    with torch.no_grad():
        truth = real(eval_x).argmax(1)
    rows = []
    n_nat = max(a.mix) * a.budget if max(a.mix) > 0 else a.budget
    for quota in [None] + ([a.quota] if a.quota is not None else []):
        tag = "" if quota is None else f", quota {quota}"
        for mix in a.mix:
            rows.append((f"jacobian, mix {mix}{tag}", *arm(mix, a.budget, seeds, natural, quota=quota)))
        rows.append((f"natural only ({n_nat}){tag}", *arm(0, n_nat, seeds, natural, natural_only=True, quota=quota)))
    print(f"budget {a.budget} synthetic queries per arm; copies scored on {len(eval_x)} held-out test digits")
    print(f"{'arm':<36} {'labels':>7} {'refused at query':>17} {'copy agreement':>15}")
    for name, n, refused, xs, ys in rows:
        agree = agreement(train_copy(torch.stack(xs), torch.tensor(ys), 10, 0), eval_x, truth) if xs else float("nan")
        print(f"{name:<36} {n:>7} {str(refused) if refused else 'never':>17} {agree:>15.3f}")


if __name__ == "__main__":
    main()
