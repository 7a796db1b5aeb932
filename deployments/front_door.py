"""Shedding at the front door: HAProxy refuses generation requests the ingress could not start in time.

Why: the ingress's admission gate decides in microseconds, but only once a request reaches it, and
on a node whose CPUs the engine saturates the ingress (a low-priority Ray worker) reaches them late:
under 3x overload (bench/overload.py) its refusals took 0.5-2.8 s at p99. HAProxy already sits in
front of every ingress replica (Serve's HAProxy mode) and decides in C, so the bound belongs there:
the ingress only holds what it can handle, and the excess is refused before any Python runs for it
(2.2 ms at p99 in the same benchmark).

The launcher (deployments/haproxy_launcher.py) applies `rewrite` to the config Serve renders, on
every start and reload. For each HTTP application backend:

- every ingress replica (`server SERVE_REPLICA_...`) gets `maxconn`: at most that many requests are
  forwarded to it at once; the rest wait in HAProxy's queue (`timeout queue` bounds the wait);
- the queue is ordered by priority class: requests other than generations (health, /v1/models,
  admin) first, then `x-raygate-priority: high`, normal, low;
- a generation request (a path ending in `/completions`) that arrives while the backend's queue
  holds its priority's share of `max_queued` is refused at once with 503, `Retry-After` and an
  OpenAI-format error body; low-priority requests are refused first (default shares: low 25%,
  normal 50%, high 100%; HAProxy cannot evict a queued request for a later high-priority one, as
  the ingress's gate does, so high priority keeps half of the queue to itself);
- HAProxy's own 503 (queue timeout, no server up) carries `Retry-After` and the same body instead
  of Serve's plain 500.

Settings come from the environment of the Serve controller, which starts HAProxy (serve_config.yaml
sets them under `controller_options.runtime_env.env_vars`); `RAYGATE_FRONT_DOOR_MAXCONN` unset or 0
leaves Serve's config as rendered.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

# The ingress's priority header (deployments/request_controls.py; a unit test keeps them equal).
PRIORITY_HEADER = "x-raygate-priority"
QUEUE_SHARE = {"high": 1.0, "normal": 0.5, "low": 0.25}
# HAProxy dequeues the lowest class first.
PRIORITY_CLASS = {"other": -2, "high": -1, "normal": 0, "low": 1}

ENV_MAXCONN = "RAYGATE_FRONT_DOOR_MAXCONN"
ENV_MAX_QUEUED = "RAYGATE_FRONT_DOOR_MAX_QUEUED"
ENV_QUEUE_TIMEOUT_S = "RAYGATE_FRONT_DOOR_QUEUE_TIMEOUT_S"
ENV_RETRY_AFTER_S = "RAYGATE_FRONT_DOOR_RETRY_AFTER_S"
ENV_QUEUE_SHARE = "RAYGATE_FRONT_DOOR_QUEUE_SHARE"  # e.g. "high=1.0,normal=0.5,low=0.25"

MARK = "# raygate front door (deployments/front_door.py)"


@dataclass(frozen=True)
class FrontDoor:
    maxconn: int = 0  # requests forwarded to one ingress replica at once; 0: leave Serve's config alone
    max_queued: int = 64  # generation requests waiting in HAProxy per application before refusals start
    queue_timeout_s: float = 30.0
    retry_after_s: int = 1
    queue_share: Mapping[str, float] = field(default_factory=lambda: dict(QUEUE_SHARE))

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "FrontDoor":
        env = os.environ if env is None else env

        def number(name: str, default, kind):
            raw = env.get(name, "").strip()
            if not raw:
                return default
            value = kind(raw)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {raw!r}")
            return value

        shares = dict(QUEUE_SHARE)
        for item in filter(None, (part.strip() for part in env.get(ENV_QUEUE_SHARE, "").split(","))):
            level, _, value = item.partition("=")
            if level.strip() not in QUEUE_SHARE or not 0 <= float(value) <= 1:
                raise ValueError(f"{ENV_QUEUE_SHARE}: {item!r} is not <high|normal|low>=<share in [0, 1]>")
            shares[level.strip()] = float(value)
        return cls(maxconn=number(ENV_MAXCONN, 0, int), max_queued=number(ENV_MAX_QUEUED, 64, int),
                   queue_timeout_s=number(ENV_QUEUE_TIMEOUT_S, 30.0, float),
                   retry_after_s=max(1, number(ENV_RETRY_AFTER_S, 1, int)), queue_share=shares)

    @property
    def enabled(self) -> bool:
        return self.maxconn > 0

    def queue_limit(self, priority: str) -> int:
        """Queued requests at which a new generation request of `priority` is refused (at least 1)."""
        return max(1, int(self.max_queued * self.queue_share[priority]))


def error_body(message: str) -> str:
    """The OpenAI-format 503 body (common/errors.py's shape, without importing vLLM here)."""
    return json.dumps({"error": {"message": message, "type": "ServiceUnavailableError", "param": None, "code": 503}})


def error_http(retry_after_s: int) -> str:
    """A whole HTTP response for HAProxy's `errorfile 503`."""
    body = error_body(f"The service is at capacity (queue full or queue wait exceeded); retry after {retry_after_s} s.")
    head = ["HTTP/1.1 503 Service Unavailable", "content-type: application/json", f"retry-after: {retry_after_s}",
            "cache-control: no-cache", "x-raygate-refused-by: front-door", "connection: close",
            f"content-length: {len(body)}"]
    return "\r\n".join(head) + "\r\n\r\n" + body


_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program|cache)\b\s*(\S*)")
_USE_BACKEND = re.compile(r"^\s*use_backend\s+(\S+)\s+if\s+(.+?)\s*$")


def _sections(lines: list[str]) -> list[tuple[str, str, int, int]]:
    """(kind, name, first line, end line) of each top-level section."""
    found = []
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            found.append([m[1], m[2], i, len(lines)])
    for a, b in zip(found, found[1:]):
        a[3] = b[2]
    return [tuple(s) for s in found]


def rewrite(config: str, door: FrontDoor, files_dir: Path) -> str:
    """Serve's rendered HAProxy config with the front door added (see the module docstring).

    Writes the 503 response files into `files_dir` (beside the config). Idempotent: a config that
    already carries the front door is returned unchanged."""
    if not door.enabled or MARK in config:
        return config
    files_dir.mkdir(parents=True, exist_ok=True)
    errorfile = files_dir / "raygate-503.http"
    errorfile.write_text(error_http(door.retry_after_s))
    refusal = files_dir / "raygate-503-queue-full.json"
    refusal.write_text(error_body(f"The service is at capacity; retry after {door.retry_after_s} s."))

    lines = config.splitlines()
    sections = _sections(lines)
    app_backends = {name for kind, name, a, b in sections if kind == "backend" and name.startswith("http-")
                    and any(l.strip().startswith("server SERVE_REPLICA_") for l in lines[a:b])}
    out: list[str] = []
    for kind, name, a, b in [("", "", 0, sections[0][2] if sections else len(lines))] + sections:
        block = lines[a:b]
        if kind == "defaults":
            block = [f"    errorfile 503 {errorfile}" if l.strip().startswith("errorfile 503 ") else l for l in block]
        elif kind == "backend" and name in app_backends:
            block = [block[0], f"    {MARK}", f"    timeout queue {int(door.queue_timeout_s * 1000)}ms"] + [
                f"{l} maxconn {door.maxconn}" if l.strip().startswith("server SERVE_REPLICA_") else l
                for l in block[1:]]
        elif kind == "frontend" and any(_USE_BACKEND.match(l) for l in block):
            first = next(i for i, l in enumerate(block) if _USE_BACKEND.match(l))
            rules = _frontend_rules([_USE_BACKEND.match(l).groups() for l in block if _USE_BACKEND.match(l)],
                                    app_backends, door, refusal)
            block = block[:first] + rules + block[first:]
        out.extend(block)
    return "\n".join(out) + "\n"


def _frontend_rules(routes: list[tuple[str, str]], app_backends: set[str], door: FrontDoor, refusal: Path) -> list[str]:
    """Priority classes and per-priority refusals, inserted before Serve's `use_backend` rules.

    The backend a request goes to is recorded in the same order as Serve's routing rules (the
    longest prefix first), so each request's queue is checked against its own backend."""
    cls = PRIORITY_CLASS
    rules = [f"    {MARK}",
             "    acl rg_generate path_end /completions",
             f"    acl rg_high req.hdr({PRIORITY_HEADER}) -i high",
             f"    acl rg_low req.hdr({PRIORITY_HEADER}) -i low",
             f"    http-request set-priority-class int({cls['other']}) if !rg_generate",
             f"    http-request set-priority-class int({cls['high']}) if rg_generate rg_high",
             f"    http-request set-priority-class int({cls['low']}) if rg_generate rg_low"]
    for backend, condition in routes:
        if backend in app_backends:
            rules.append(f"    http-request set-var(txn.rg_backend) str({backend}) if {condition} "
                         "!{ var(txn.rg_backend) -m found }")
    levels = {"high": "rg_high", "normal": "!rg_high !rg_low", "low": "rg_low"}
    for backend, _ in routes:
        if backend not in app_backends:
            continue
        for level, acl in levels.items():
            rules.append(
                f"    http-request return status 503 content-type application/json file {refusal} "
                f"hdr retry-after {door.retry_after_s} hdr x-raygate-refused-by front-door "
                f"if rg_generate {acl} {{ var(txn.rg_backend) -m str {backend} }} "
                f"{{ queue({backend}) ge {door.queue_limit(level)} }}")
    return rules


def rewrite_argv(args: list[str], door: Optional[FrontDoor] = None) -> list[str]:
    """HAProxy's arguments with `-f CONFIG` pointing at the rewritten copy of CONFIG (beside it)."""
    door = door or FrontDoor.from_env()
    if not door.enabled or "-f" not in args:
        return args
    i = args.index("-f") + 1
    source = Path(args[i])
    target = source.with_name(source.stem + ".raygate" + source.suffix)
    target.write_text(rewrite(source.read_text(), door, source.parent))
    return args[:i] + [str(target)] + args[i + 1:]
