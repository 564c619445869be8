"""Load benchmark for `secure-ml serve` on loopback: guard cost, latency, rate-limit accuracy, server memory.

Three phases, each against a fresh server subprocess (``python -m secure_ml.serving.cli serve``), each
driven for ``--duration / 3`` seconds by ``--clients`` closed-loop threads (one API key each, keep-alive
``http.client`` connections, each client its own disjoint shuffled slice of the 10,000 MNIST digits):

1. ``guards off``: ``guards: false`` (no body limit, auth, rate limit, policy, audit, detector);
2. ``guards on``: everything on (audit file, PRADA detector, variance policy), rate limit set high
   enough not to bind, so the difference with phase 1 is the guards' cost;
3. ``rate limit``: guards on with the seed's limit (``--max-qps`` 100, ``--burst`` 10 per client): the
   observed allowed rate per client, ``(200s - burst) / duration``, against the configured rate;
4. with ``--redis-url``: ``guards on`` again with ``rate_limit.storage`` in Redis (the replicas' setting),
   so its ratio to phase 2 is the cost of the shared store.

``--rounds N`` alternates phases 1 and 2 N times and reports the median off/on ratio (for loaded machines).

The server serves a release artifact (``secure-ml export``'s format), as a deployment would.

Reported per phase: seconds from launch to the "listening" line, requests/s (all answers and 200s only), client-side p50/p99 latency, status counts,
and the server's RSS (``/proc/<pid>/status``) after warm-up and at the end. All traffic is 127.0.0.1;
every loop is bounded by the phase deadline.

    python benchmarks/serve_load.py [--ckpt_path RELEASE_OR_CKPT] [--duration 20] [--clients 4] [--rounds 1] [--redis-url URL] [--json out.json]
"""

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start_server(ckpt: str, cfg: dict, keys, tmp: Path):
    import yaml

    cfg_path = tmp / f"serve-{len(list(tmp.iterdir()))}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "SECURE_ML_API_KEYS": ",".join(keys)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_ml.serving.cli", "serve", "--ckpt_path", ckpt, "--config", str(cfg_path), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    seen = []
    for line in proc.stderr:  # warnings (a training checkpoint), then "secure-ml serve: listening on http://127.0.0.1:PORT"
        seen.append(line)
        if "listening on" in line:
            break
    match = re.search(r"http://127\.0\.0\.1:(\d+)", seen[-1] if seen else "")
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {''.join(seen)}{proc.stderr.read()}")
    startup_s = time.monotonic() - t0
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
    port = int(match.group(1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.1)
    return proc, port, startup_s


def client_loop(port, key, bodies, deadline, out):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    i = 0
    while time.monotonic() < deadline:
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status = -1
        out.append((status, time.perf_counter() - t0))
        i += status != 429  # a rate-limited image is sent again, as a real client would
    conn.close()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_phase(name, ckpt, cfg, n_clients, seconds, bodies, tmp, warmup_s=1.0):
    keys = [f"bench-client-{i:02d}-{'k' * 16}" for i in range(n_clients + 1)]  # the last one only warms up
    proc, port, startup_s = start_server(ckpt, cfg, keys, tmp)
    try:
        # disjoint, shuffled digits per client: replaying one image is (rightly) what PRADA flags
        order = random.Random(0).sample(bodies, len(bodies))
        size = len(order) // len(keys)
        orders = [order[i * size : (i + 1) * size] for i in range(len(keys))]
        warm_key, warm_order, keys, orders = keys[-1], orders[-1], keys[:-1], orders[:-1]
        warm = []
        client_loop(port, warm_key, warm_order, time.monotonic() + warmup_s, warm)
        rss_before = rss_kib(proc.pid)
        results = [[] for _ in keys]
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=client_loop, args=(port, k, o, deadline, r)) for k, o, r in zip(keys, orders, results)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        elapsed = time.monotonic() - t0
        rss_after = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    flat = [x for r in results for x in r]
    ok = [lat for s, lat in flat if s == 200]
    statuses = {}
    for s, _ in flat:
        statuses[s] = statuses.get(s, 0) + 1
    per_client_ok = [sum(1 for s, _ in r if s == 200) for r in results]
    return {
        "phase": name,
        "startup_s": round(startup_s, 2),
        "seconds": round(elapsed, 2),
        "requests": len(flat),
        "rps": len(flat) / elapsed,
        "ok_rps": len(ok) / elapsed,
        "p50_ms": 1000 * percentile([lat for _, lat in flat], 0.5),
        "p99_ms": 1000 * percentile([lat for _, lat in flat], 0.99),
        "ok_p50_ms": 1000 * percentile(ok, 0.5),
        "ok_p99_ms": 1000 * percentile(ok, 0.99),
        "statuses": statuses,
        "per_client_ok": per_client_ok,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_growth_mib": (rss_after - rss_before) / 1024,
    }


def quick_model(load_mnist):
    import torch

    from secure_ml.models import SmallCNN

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_mnist(str(DATA), train=True, download=False)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(2000, generator=g)
        for i in range(0, 2000, 64):
            loss = torch.nn.functional.cross_entropy(model(x[perm[i : i + 64]]), y[perm[i : i + 64]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--ckpt_path",
        default=None,
        help="default: a SmallCNN trained for ~2 s on 2,000 digits (seeded). An untrained "
        "net predicts nearly one class, which skews PRADA's per-class distances into false alarms",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="driving time of the three main phases together (each runs --duration / 3 s; the Redis phase as long)",
    )
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rl-clients", type=int, default=2, help="clients in the rate-limit phase (each must offer > --max-qps)")
    p.add_argument("--max-qps", type=float, default=100.0)
    p.add_argument("--burst", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1, help="guards off/on phase pairs, alternated (median ratio reported)")
    p.add_argument("--redis-url", default=None, help="also measure guards on with rate_limit.storage at this Redis")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from secure_ml.data.mnist import load_mnist

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    ckpt = args.ckpt_path
    if ckpt is None:
        from secure_ml.release.artifact import write_release

        ckpt = str(tmp / "release")
        write_release(Path(ckpt), quick_model(load_mnist), None, {"dp": False})
    x = torch.cat([load_mnist(str(DATA), train=False, download=False)[0], load_mnist(str(DATA), train=True, download=False)[0]])
    bodies = [json.dumps({"image": [[round(v, 4) for v in row] for row in img[0].tolist()]}).encode() for img in x]
    seconds = args.duration / 3
    base = {"model": {"torch_threads": 1}, "audit": {"path": str(tmp / "audit.jsonl")}}
    no_bind = {"burst": 100_000, "max_qps": 100_000.0}
    phases = [
        ("guards off", {**base, "guards": False}),
        ("guards on", {**base, "rate_limit": no_bind}),
        ("rate limit", {**base, "rate_limit": {"burst": args.burst, "max_qps": args.max_qps}}),
    ]
    if args.redis_url:
        phases.append(("on, redis", {**base, "rate_limit": {**no_bind, "storage": args.redis_url}}))
    order = [phases[0], phases[1]] * args.rounds + phases[2:]  # off/on alternate: a load change hits both alike
    results = [
        run_phase(name, ckpt, cfg, args.rl_clients if name == "rate limit" else args.clients, seconds, bodies, tmp) for name, cfg in order
    ]
    offs = [r for r in results if r["phase"] == "guards off"]
    ons = [r for r in results if r["phase"] == "guards on"]
    off, on = offs[len(offs) // 2], ons[len(ons) // 2]
    rl = next(r for r in results if r["phase"] == "rate limit")
    redis_on = next((r for r in results if r["phase"] == "on, redis"), None)
    accuracy = [(n - args.burst) / rl["seconds"] / args.max_qps for n in rl["per_client_ok"]]
    summary = {
        "clients": args.clients,
        "phase_seconds": round(seconds, 2),
        "phases": results,
        "guard_cost_throughput_ratio_per_round": [round(a["ok_rps"] / b["ok_rps"], 3) for a, b in zip(offs, ons) if b["ok_rps"]],
        "guard_cost_throughput_ratio": statistics.median(a["ok_rps"] / b["ok_rps"] for a, b in zip(offs, ons) if b["ok_rps"]),
        "guard_cost_p50_ratio": on["ok_p50_ms"] / off["ok_p50_ms"],
        "guard_cost_p99_ratio": on["ok_p99_ms"] / off["ok_p99_ms"],
        "rate_limit_configured_qps": args.max_qps,
        "rate_limit_burst": args.burst,
        "rate_limit_observed_qps_per_client": [round((n - args.burst) / rl["seconds"], 1) for n in rl["per_client_ok"]],
        "rate_limit_accuracy": [round(a, 3) for a in accuracy],
    }
    if args.redis_url:
        summary["redis_cost_throughput_ratio"] = ons[-1]["ok_rps"] / redis_on["ok_rps"] if redis_on["ok_rps"] else None
        summary["redis_cost_p50_ratio"] = redis_on["ok_p50_ms"] / ons[-1]["ok_p50_ms"]
    print(
        f"secure-ml serve load benchmark: {args.clients} clients ({args.rl_clients} in the rate-limit phase), "
        f"{seconds:.1f} s per phase, loopback, {os.cpu_count()} CPUs"
    )
    print(f"{'phase':<11} {'start s':>7} {'req/s':>8} {'200/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'growth':>7}  statuses")
    for r in results:
        print(
            f"{r['phase']:<11} {r['startup_s']:>7.2f} {r['rps']:>8.1f} {r['ok_rps']:>8.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['rss_after_mib']:>8.1f} {r['rss_growth_mib']:>+7.1f}  {r['statuses']}"
        )
    print(
        f"guard cost: throughput off/on = {summary['guard_cost_throughput_ratio']:.2f}x "
        f"(median of rounds {summary['guard_cost_throughput_ratio_per_round']}), "
        f"p50 on/off = {summary['guard_cost_p50_ratio']:.2f}x, p99 on/off = {summary['guard_cost_p99_ratio']:.2f}x"
    )
    print(
        f"rate limit: configured {args.max_qps:g} QPS (burst {args.burst}) per client; observed allowed "
        f"{summary['rate_limit_observed_qps_per_client']} QPS -> accuracy {summary['rate_limit_accuracy']}"
    )
    if args.redis_url:
        print(
            f"shared store: throughput memory/redis = {summary['redis_cost_throughput_ratio']:.2f}x, "
            f"p50 redis/memory = {summary['redis_cost_p50_ratio']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
