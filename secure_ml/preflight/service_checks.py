"""Checklist items about the running service: serve.yaml, the keys, the network, the request log (docs/deployment.md §1-4)."""

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from secure_ml.preflight.deployment import Deployment

GUARDS = ("body", "auth", "rate_limit", "policy", "audit", "extraction")
MIN_KEY = 16
LOGROTATE_DEFAULTS = (Path("/etc/logrotate.conf"), Path("/etc/logrotate.d"))


@dataclass
class Check:
    """One checklist item: ``status`` is PASS, FAIL or SKIP (could not be checked without more input); ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def ok(name: str, detail: str) -> Check:
    return Check(name, "PASS", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


def config_check(dep: Deployment) -> Check:
    if "config" in dep.problems:
        return fail("serve-config", dep.problems["config"], "fix the option named above (docs/dev/serve.md lists every option)")
    return ok("serve-config", f"{dep.serve_path} validates")


def guards_check(dep: Deployment) -> Check:
    cfg = dep.config
    if not cfg.guards:
        return fail("guards", "guards: false switches every guard off (the benchmark baseline)", "set guards: true")
    off = [g for g in GUARDS if not cfg.guard_on(g)]
    if off:
        return fail(
            "guards", f"switched off: {', '.join(f'{g}.enabled' for g in off)}", "set " + ", ".join(f"{g}.enabled: true" for g in off)
        )
    return ok("guards", "body limit, API keys, rate limit, input policy, request log and extraction detector are on")


def keys_check(dep: Deployment) -> Check:
    cfg = dep.config
    api, admin = cfg.auth.resolved_keys()
    needed = max(MIN_KEY, cfg.auth.min_key_length)
    problems = []
    if not api:
        problems.append("no client key (auth.api_keys and $SECURE_ML_API_KEYS are empty)")
    short = [k for k in api + admin if len(k) < needed]
    if short:
        problems.append(f"{len(short)} key(s) shorter than {needed} characters")
    if cfg.auth.min_key_length < MIN_KEY:
        problems.append(f"auth.min_key_length is {cfg.auth.min_key_length} (< {MIN_KEY})")
    if set(api) & set(admin):
        problems.append("a key is both a client and an admin key")
    written = [s for s in ("api_keys", "admin_keys") if ((dep.raw.get("auth") or {}).get(s) or [])]
    if written:
        problems.append(f"keys written in {dep.serve_path.name} ({', '.join('auth.' + s for s in written)})")
    if problems:
        return fail(
            "api-keys",
            "; ".join(problems),
            f"put keys of at least {needed} random characters in $SECURE_ML_API_KEYS / $SECURE_ML_ADMIN_KEYS (not in the file), "
            "distinct for clients and admins, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'",
        )
    return ok("api-keys", f"{len(api)} client key(s) from the environment, all at least {needed} characters")


def admin_check(dep: Deployment) -> Check:
    _, admin = dep.config.auth.resolved_keys()
    if not admin:
        return fail("admin-key", "no admin key: nobody can read /metrics, so nothing can be monitored", "set $SECURE_ML_ADMIN_KEYS")
    return ok("admin-key", f"{len(admin)} admin key(s) can read /metrics")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_check(dep: Deployment, tls_proxy: bool) -> Check:
    host, port = dep.config.server.host, dep.config.server.port
    if _loopback(host):
        return ok("bind-address", f"{host}:{port} is reachable from this host only (put a TLS-terminating proxy in front for clients)")
    if tls_proxy:
        return ok("bind-address", f"{host}:{port} with a TLS-terminating proxy in front (--tls-proxy); firewall it to the proxy")
    return fail(
        "bind-address",
        f"server.host {host} listens beyond this host in plain HTTP: API keys and images would cross the network unencrypted",
        "bind server.host: 127.0.0.1 behind a TLS-terminating reverse proxy (nginx, Caddy), or pass --tls-proxy if one already "
        "terminates TLS in front of this address and only it can reach the port",
    )


def docs_check(dep: Deployment) -> Check:
    if dep.config.server.docs:
        return fail("api-docs", "server.docs: true serves /docs and /openapi.json without a key", "set server.docs: false")
    return ok("api-docs", "/docs and /openapi.json are off")


def log_paths(dep: Deployment) -> List[Path]:
    audit = dep.config.audit
    path = Path(audit.path).expanduser().resolve()
    alerts = Path(audit.alert_path).expanduser().resolve() if audit.alert_path else path.with_name(path.stem + ".alerts.jsonl")
    return [path, alerts]


def _appendable(path: Path) -> Optional[str]:
    if path.exists():
        return None if path.is_file() and os.access(path, os.W_OK) else f"{path} is not a writable file"
    parent = path.parent
    return None if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK) else f"{parent} does not exist or is not writable"


def log_writable_check(dep: Deployment) -> Check:
    if not dep.config.guard_on("audit"):
        return fail("request-log", "the request log (audit) is off: no record of who asked what", "set audit.enabled: true")
    problems = [p for p in (_appendable(path) for path in log_paths(dep)) if p]
    if problems:
        return fail(
            "request-log", "; ".join(problems), "create the folder and give the service's user write access (the service fails closed: 503)"
        )
    return ok("request-log", f"{log_paths(dep)[0]} and its alert log can be appended to")


def _patterns(text: str) -> List[str]:
    """File patterns of the stanzas of a logrotate config (``/var/log/x/*.jsonl /var/log/y.log { ... }``)."""
    text = re.sub(r"#.*", "", text)
    heads = re.findall(r"(?m)^\s*([^{}\n]+?)\s*\{", text)
    return [p.strip("\"'") for head in heads for p in head.split() if p.startswith(("/", "~", '"', "'"))]


def _glob_covers(pattern: str, path: str) -> bool:
    """Does logrotate's glob(3) ``pattern`` name ``path``? Component by component: ``*`` never crosses a ``/`` (fnmatch's does,
    which passed a stanza for ``/var/log/*.jsonl`` as covering ``/var/log/app/audit.jsonl``)."""
    parts, names = pattern.split("/"), path.split("/")
    return len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts))


def rotated_check(dep: Deployment, logrotate: Optional[Path]) -> Check:
    paths = log_paths(dep)
    places = [logrotate] if logrotate is not None else list(LOGROTATE_DEFAULTS)
    files = [f for p in places if p.exists() for f in ([p] if p.is_file() else sorted(p.iterdir())) if f.is_file()]
    uncovered = []
    for path in paths:
        covering = [
            f for f in files if any(_glob_covers(os.path.expanduser(pat), str(path)) for pat in _patterns(f.read_text(errors="replace")))
        ]
        if not covering:
            uncovered.append(str(path))
    if uncovered:
        where = str(logrotate) if logrotate else "/etc/logrotate.conf or /etc/logrotate.d/"
        stanza = f"{Path(paths[0]).parent}/*.jsonl {{ daily rotate 30 compress missingok notifempty }}"
        return fail(
            "request-log-rotated",
            f"no logrotate stanza in {where} covers {', '.join(uncovered)}",
            f"add a stanza such as '{stanza}' (the service opens the log per line, so a moved file needs no signal)",
        )
    return ok("request-log-rotated", f"a logrotate stanza covers {paths[0].name} and its alert log")


def rate_limit_check(dep: Deployment) -> Check:
    rl = dep.config.rate_limit
    if not dep.config.guard_on("rate_limit"):
        return fail("rate-limit", "the per-key rate limit is off", "set rate_limit.enabled: true (seed: max_qps 100, burst 10)")
    shared = "shared by replicas through Redis" if rl.shared else "per replica (memory://)"
    return ok("rate-limit", f"token bucket per key: {rl.max_qps:g} QPS, burst {rl.burst}, {shared}")


def extraction_check(dep: Deployment) -> Check:
    ex = dep.config.extraction
    if not dep.config.guard_on("extraction"):
        return fail("extraction-detector", "the model-extraction detector is off", "set extraction.enabled: true")
    local = not dep.config.rate_limit.shared
    if local and ex.action == "block" and ex.block_seconds == 0 and ex.block_file is None:  # "forever" dies with the process
        return fail(
            "extraction-detector",
            "extraction.block_seconds: 0 blocks 'forever', but under rate_limit.storage memory:// the block list lives in the "
            "process: a restart (a rolling key rotation, a crash) lifts every block and starts PRADA afresh",
            "set extraction.block_file (blocks kept across restarts), rate_limit.storage: redis://... (shared and kept), "
            "or a finite extraction.block_seconds",
        )
    unusable = _block_file_problem(ex.block_file) if ex.block_file else None
    if unusable:  # serve refuses to start on it
        return fail("extraction-detector", f"extraction.block_file {ex.block_file}: {unusable}", "point it at a writable file")
    kept = ""
    if local and ex.action == "block":
        in_file = f" (blocks kept in {ex.block_file}; PRADA state restarts with the process)"
        kept = in_file if ex.block_file else " (blocks and PRADA state live in this process: a restart lifts them)"
    return ok("extraction-detector", f"PRADA per key (W < {ex.delta:g} after {ex.min_distances} distances), action {ex.action}{kept}")


def _block_file_problem(path: str):
    """Why ``secure-ml serve`` would refuse this block file at start-up (it reads it and rewrites it beside itself), or None.
    Read-only: the file is not parsed or written here."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_file():
        return "is not a regular file"
    if p.exists() and not os.access(p, os.R_OK):
        return "cannot be read"
    folder = p.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} does not exist or cannot be written"
    return None


def output_check(dep: Deployment) -> Check:
    out = dep.config.output
    if out.probabilities and (out.precision is None or out.precision > 2):
        return fail(
            "output-rounding",
            f"probabilities are returned with {'full' if out.precision is None else out.precision} decimals",
            "set output.precision: 2 (or output.probabilities: false): full probabilities help membership inference and extraction",
        )
    return ok("output-rounding", "labels only" if not out.probabilities else f"probabilities rounded to {out.precision} decimals")
