"""`ando explain`: what the gateway would do with one request, and why, without sending it.

It runs the same compiled config, router and balancer the workers run, on a request built from
the command line, so "why did this hit route X" is answered by the code that decides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ando.config.snapshot import Snapshot
from ando.http.path import BadTarget, split_target
from ando.proxy.compiled import RouteRuntime, RuntimeConfig
from ando.proxy.variables import Vars


class ExplainError(ValueError):
    """The request given on the command line is not one a client could send."""


@dataclass
class Explanation:
    request: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    route: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] = field(default_factory=list)
    upstream: dict[str, Any] | None = None
    outcome: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "candidates": self.candidates,
            "route": self.route,
            "plugins": self.plugins,
            "upstream": self.upstream,
            "outcome": self.outcome,
        }


def build_request(method: str, url: str, headers: list[str], remote_addr: str) -> Vars:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ExplainError(f"'{url}': only http:// and https:// URLs")
    req = Vars()
    req.method = method.upper()
    req.scheme = parts.scheme
    req.client_addr = remote_addr
    req.server_port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    req.target = target.encode()
    try:
        req.path, req.query = split_target(req.target)
    except BadTarget as e:
        raise ExplainError(
            f"the gateway would refuse this URL with {e.status}: {e.reason}"
        ) from None
    host_header: bytes | None = parts.netloc.encode() if parts.netloc else None
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"header '{h}' is not 'Name: value'")
        if name.strip().lower() == "host":
            host_header = value.strip().encode()
            continue
        req.headers.append((name.strip().encode(), value.strip().encode()))
    if host_header is not None:
        req.raw_host = host_header
        req.headers.insert(0, (b"Host", host_header))
        host = host_header.decode().lower()
        req.host = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return req


def explain(
    snapshot: Snapshot, method: str, url: str, headers: list[str], remote_addr: str
) -> Explanation:
    config = RuntimeConfig(snapshot)
    req = build_request(method, url, headers, remote_addr)
    v = req
    out = Explanation(
        request={
            "method": req.method,
            "host": req.host,
            "path": req.path,
            "query": req.query.decode("latin-1"),
            "remote_addr": req.client_addr,
        }
    )
    winner: RouteRuntime | None = None
    for cand in config.router.explain(req.method, req.host, req.path, req.client_addr, v.get):
        rt = cand.entry.payload
        assert isinstance(rt, RouteRuntime)
        out.candidates.append(
            {
                "route_id": cand.entry.route_id,
                "uri": cand.uri,
                "host_table": cand.host,
                "matched": cand.matched,
                "reason": cand.reason,
                "params": dict(cand.params),
            }
        )
        if cand.matched:
            winner = rt
    disabled = [
        r
        for r in config.routes
        if r.record.status == 0
        and any(
            u == req.path or (u.endswith("*") and req.path.startswith(u[:-1]))
            for u in r.record.uris
        )
    ]
    for r in disabled:
        out.candidates.append(
            {
                "route_id": r.id,
                "uri": ", ".join(r.record.uris),
                "host_table": None,
                "matched": False,
                "reason": "disabled (status: 0)",
                "params": {},
            }
        )
    if winner is None:
        if config.global_configured is not None:
            out.plugins = config.global_configured.describe()
        out.outcome = '404 {"error_msg":"404 Route Not Found"}' + (
            " (after the global rules' plugins)" if out.plugins else ""
        )
        return out
    rec = winner.record
    out.route = {
        "id": rec.id,
        "name": rec.name,
        "uris": list(rec.uris),
        "service_id": rec.service_id,
        "priority": rec.priority,
        "enable_websocket": winner.websocket,
    }
    out.plugins = winner.configured.describe() if winner.configured is not None else []
    up = winner.upstream
    if up is None:
        out.outcome = "503: the route has no upstream (missing upstream configuration)"
        return out
    v.route_id, v.service_id = rec.id, rec.service_id
    node = up.balancer.pick(v)
    out.upstream = {
        "id": up.id,
        "type": up.record.type,
        "nodes": [{"addr": n.addr, "weight": n.weight, "priority": n.priority} for n in up.nodes],
        "pass_host": up.pass_host,
        "retries": up.max_attempts - 1,
        "timeout": {
            "connect": winner.timeout.connect,
            "send": winner.timeout.send,
            "read": winner.timeout.read,
        },
        "picked": node.addr if node else None,
    }
    out.outcome = f"proxied to {node.addr}" if node else "503: no upstream node available"
    return out


def render_text(e: Explanation) -> str:
    r = e.request
    lines = [
        f"request:  {r['method']} {r['host'] or '(no host)'}{r['path']}"
        + (f"?{r['query']}" if r["query"] else "")
        + f"  from {r['remote_addr']}"
    ]
    lines.append("routes tried, in order:")
    if not e.candidates:
        lines.append("  (no route's uri matches this path)")
    for c in e.candidates:
        mark = "=>" if c["matched"] else "  "
        where = f" [host {c['host_table']}]" if c["host_table"] else ""
        params = f" params={c['params']}" if c["params"] else ""
        why = "matched" if c["matched"] else c["reason"]
        lines.append(f"  {mark} {c['route_id']}  uri {c['uri']}{where}{params}: {why}")
    if e.route is not None:
        rt = e.route
        lines.append(
            f"route:    {rt['id']}"
            + (f" ({rt['name']})" if rt["name"] else "")
            + (f", service {rt['service_id']}" if rt["service_id"] else "")
        )
        if e.plugins:
            lines.append("plugins:  " + ", ".join(_plugin_text(p) for p in e.plugins))
        else:
            lines.append("plugins:  none")
    elif e.plugins:
        lines.append("plugins:  " + ", ".join(_plugin_text(p) for p in e.plugins))
    if e.upstream is not None:
        u = e.upstream
        nodes = ", ".join(
            f"{n['addr']} (weight {n['weight']}"
            + (f", priority {n['priority']})" if n["priority"] else ")")
            for n in u["nodes"]
        )
        lines.append(f"upstream: {u['id']} {u['type']}: {nodes}")
        t = u["timeout"]
        lines.append(
            f"          pass_host {u['pass_host']}, retries {u['retries']}, timeouts "
            f"connect {t['connect']}s send {t['send']}s read {t['read']}s"
        )
    lines.append(f"outcome:  {e.outcome}")
    return "\n".join(lines)


def _plugin_text(p: dict[str, Any]) -> str:
    off = ", disabled" if p.get("disabled") else ""
    return f"{p['name']} ({p['from']}, priority {p['priority']}{off})"
