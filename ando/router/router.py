"""Route matching, with APISIX 3.x's ``radixtree_host_uri`` semantics.

APISIX users move their configs over unchanged, so a request must land on the same route here as
it does there.  The rules below are read from lua-resty-radixtree (``lib/resty/radixtree.lua``)
and APISIX (``apisix/http/router/radixtree_host_uri.lua``, ``apisix/utils/router.lua``):

1. **Hosts first.**  Routes with ``hosts`` are tried before routes without.  The request host is
   looked up exactly first, then against wildcard hosts (``*.example.com``) from the longest
   suffix to the shortest; a wildcard matches by raw suffix, so ``*.example.com`` matches
   ``a.b.example.com`` but not ``example.com``.  Each host has its own table of routes; when no
   route in one host's table passes, the next host table is tried, and last the host-less table.
   (A route inherits its service's ``hosts`` when it has none — the caller resolves that.)
2. **Within a table, exact uris first.**  A uri with no ``*`` (and, with parameter matching, no
   ``:``) is looked up in a dict; those routes are tried first, whatever their priority.
3. **Then prefixes, longest first.**  Any other uri is stored in a radix tree under the text
   before its first ``:`` (parameter matching) or ``*``: ``/foo*`` under ``/foo`` (raw string
   prefix: matches ``/foo`` and ``/foobar``), ``/foo/*`` under ``/foo/`` (matches ``/foo/`` and
   ``/foo/x``, not ``/foo``), ``/user/:id`` under ``/user/``.  Every stored key that is a prefix
   of the path is visited, longest key first; a longer key always wins, whatever the priority.
4. **Within one key (or one exact uri): ``priority`` (higher first), then the longer uri
   pattern** (so ``/user/:id/posts`` is tried before ``/user/:id`` before ``/user/*``), **then
   config order.**
5. **Uris are compared decoded.**  APISIX matches against nginx's percent-decoded ``$uri``; the
   path Ando routes on keeps escapes outside the unreserved set, so each route uri is spelled
   that way once, at build time (``/café`` is stored as ``/caf%C3%A9``; see _canonical_uri).
6. **A candidate must pass** ``methods``, ``remote_addrs`` and ``vars`` (and, for a pattern uri,
   match the whole path: ``:name`` is exactly one non-empty segment, ``*name`` anything);
   otherwise the next candidate is tried, then the next key, then the next host table.

All of that is decided at build time: tables, tree keys and the order of the candidates at each
key.  A match is a dict lookup per host table, one walk down the path through the radix tree, and
a short loop over pre-sorted candidates — the cost does not grow with the number of routes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol, cast

from ando.router.tree import RadixTree

__all__ = [
    "EMPTY_PARAMS",
    "Candidate",
    "Match",
    "RouteEntry",
    "Router",
]

Lookup = Callable[[str], object]

#: Shared, read-only params of every match without path parameters (no allocation per match).
EMPTY_PARAMS: Mapping[str, str] = MappingProxyType({})


class AddrSet(Protocol):
    """What the router needs from a compiled ``remote_addrs`` (ando/router/ipset.py)."""

    def contains(self, addr: str) -> bool: ...


class VarsExpr(Protocol):
    """What the router needs from a compiled ``vars`` expression (ando/router/expr.py)."""

    def evaluate(self, lookup: Lookup) -> bool: ...


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route as the router sees it: its uris and the predicates that must also hold.

    ``payload`` is opaque here (the compiled route); the router hands it back on a match.
    ``hosts`` must be lower-case; a leading ``*`` makes a suffix wildcard.  ``None`` means any
    host; an empty tuple, as in APISIX, means the route can never match.  An empty ``methods``
    set means any method, as in APISIX.
    """

    payload: object
    route_id: str
    uris: tuple[str, ...]
    methods: frozenset[str] | None = None
    hosts: tuple[str, ...] | None = None
    remote_addrs: object | None = None
    vars: object | None = None
    priority: int = 0
    order: int = 0


class Match(NamedTuple):
    """The winning route, the uri pattern that matched, and the path parameters it captured.

    ``params`` is the shared :data:`EMPTY_PARAMS` when the pattern has no named parameter; a
    match without params is prebuilt per route, so it allocates nothing.  A NamedTuple rather
    than a frozen dataclass: as immutable, and half the cost to build when there are params.
    """

    entry: RouteEntry
    params: Mapping[str, str]
    uri: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (route, uri) whose uri matches the path, as ``explain`` reports it.

    ``host`` is the host table it was tried under (``None``: the host-less table); ``reason``
    says why it was not chosen ("" for the winner).
    """

    entry: RouteEntry
    uri: str
    host: str | None
    params: Mapping[str, str]
    matched: bool
    reason: str


_EXACT = 0
_PREFIX = 1
_PATTERN = 2


class _Cand:
    """A (route, uri) pair compiled for the hot loop: plain attributes, no indirection."""

    __slots__ = (
        "by_name",
        "capture",
        "entry",
        "key",
        "kind",
        "match",
        "methods",
        "names",
        "path",
        "rank_len",
        "regex",
        "remote_addrs",
        "simple",
        "start",
        "uri",
        "vars",
    )

    def __init__(self, entry: RouteEntry, uri: str, param_match: bool) -> None:
        self.entry = entry
        self.uri = uri  # as written: what a Match reports (APISIX's matched _path)
        # The uri in the form of a normalized request path (see _canonical_uri): what is matched.
        self.path = path = _canonical_uri(uri)
        # radixtree orders equal priorities by the pattern's length in bytes (Lua's #path_org).
        self.rank_len = len(uri) if uri.isascii() else len(uri.encode("utf-8", "surrogatepass"))
        methods = entry.methods
        self.methods = methods if methods else None
        # The compiled objects from ando/router/ipset.py and expr.py; only these methods are used.
        # Bound once, so the hot loop makes one call and no attribute lookup per predicate.
        addrs = cast("AddrSet | None", entry.remote_addrs)
        expr = cast("VarsExpr | None", entry.vars)
        self.remote_addrs = addrs.contains if addrs is not None else None
        self.vars = expr.evaluate if expr is not None else None
        self.kind, self.key, self.regex, self.names, self.capture = _compile_uri(path, param_match)
        # With distinct identifier names the regex uses named groups and groupdict() is the
        # params dict, built in C; otherwise zip names with groups (a repeated name: last wins,
        # as in radixtree).
        self.by_name = self.regex is not None and bool(self.regex.groupindex)
        self.start = len(self.key)
        # A Match for the no-params case, built once so that a match allocates nothing.
        self.match = Match(entry, EMPTY_PARAMS, uri)
        self.simple = (
            self.methods is None
            and self.remote_addrs is None
            and self.vars is None
            and self.regex is None
            and self.capture is None
        )

    def path_params(self, path: str) -> Mapping[str, str] | None:
        """The params if this uri matches ``path`` at all, else None (cold path: explain)."""
        if self.kind == _EXACT:
            return EMPTY_PARAMS if path == self.path else None
        if not path.startswith(self.key):
            return None
        return self._params(path)

    def _params(self, path: str) -> Mapping[str, str] | None:
        """Given that the path starts with ``key``: the params, or None if the pattern fails."""
        regex = self.regex
        if regex is None:
            if self.capture is None:
                return EMPTY_PARAMS
            return {self.capture: path[self.start :]}
        m = regex.fullmatch(path)
        if m is None:
            return None
        if self.by_name:
            return m.groupdict()
        if not self.names:
            return EMPTY_PARAMS
        return dict(zip(self.names, m.groups(), strict=False))

    def reject_reason(self, method: str, remote_addr: str, lookup: Lookup) -> str | None:
        """Why the predicates refuse this request, in radixtree's order; None if they pass."""
        if self.methods is not None and method not in self.methods:
            return f"method {method} not in [{', '.join(sorted(self.methods))}]"
        if self.remote_addrs is not None and not self.remote_addrs(remote_addr):
            return f"remote_addr {remote_addr} not in remote_addrs"
        if self.vars is not None and not self.vars(lookup):
            return "vars did not match"
        return None


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
# Characters a normalized request path may hold as they are (ando/http/path.py): visible ASCII
# but "%" (always an escape there), "#", "?" and the backslash (never raw in a path).
_RAW_OK = frozenset(map(chr, range(0x21, 0x7F))) - frozenset("%#?\\")
_NEEDS_CANONICAL = re.compile(r"[^\x21-\x7e]|[%#?\\]")


def _canonical_uri(uri: str) -> str:
    """A route uri spelled as a normalized request path spells the same decoded path.

    APISIX compares a route's uri with nginx's ``$uri``, which is percent-decoded: ``/café`` and
    ``/a b`` serve requests for ``/caf%C3%A9`` and ``/a%20b``.  Ando's normalized path keeps the
    escape of every byte outside the unreserved set (upper-case hex) and can never hold a space,
    a non-ASCII character, ``?`` or ``#`` as such, so those are escaped here, once, at build
    time.  A ``%`` that starts an escape is read as one (lower-case hex and escaped unreserved
    characters are spelled as the normalizer spells them, so ``%2A`` stays a literal, not a
    wildcard); any other ``%`` is a literal percent sign.
    """
    if _NEEDS_CANONICAL.search(uri) is None:
        return uri
    out: list[str] = []
    i = 0
    n = len(uri)
    while i < n:
        ch = uri[i]
        if ch in _RAW_OK:
            out.append(ch)
        elif ch == "%" and len(hex2 := uri[i + 1 : i + 3]) == 2 and set(hex2) <= _HEXDIGITS:
            byte = int(hex2, 16)
            out.append(chr(byte) if chr(byte) in _UNRESERVED else f"%{byte:02X}")
            i += 3
            continue
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _compile_uri(
    uri: str, param_match: bool
) -> tuple[int, str, re.Pattern[str] | None, tuple[str, ...], str | None]:
    """Classify a uri the way lua-resty-radixtree does: (kind, tree key, regex, names, capture).

    The tree key is the text before the first ``:`` (only with parameter matching, and only
    when some segment starts with ``:``) or else the first ``*``; a uri with neither is exact
    (``/a-:id`` and ``/v1/x:get`` included).  radixtree then checks the whole pattern against
    the path only if some ``/``-separated segment *starts* with ``:`` or ``*``; otherwise the
    key alone decides (so ``/foo*bar`` behaves as ``/foo*``).
    A lone trailing ``*``/``*name`` segment is a plain prefix too (with ``name`` capturing the
    rest), so the common ``/foo/*`` never touches a regex.
    """
    colon = uri.find(":") if param_match else -1
    if colon >= 0 and "/:" not in uri and uri[:1] != ":":
        # No segment starts with ":", so nothing is a parameter: the colons are text, as in
        # APISIX's default router, and "/v1/things:batchGet" stays exact instead of becoming
        # the prefix "/v1/things" (radixtree_uri_with_parameter's accident).
        colon = -1
    if colon >= 0:
        key = uri[:colon]
    else:
        star = uri.find("*")
        if star < 0:
            return _EXACT, uri, None, (), None
        key = uri[:star]
    segments = uri.split("/")
    special = [i for i, seg in enumerate(segments) if seg[:1] in (":", "*")]
    if not special:
        return _PREFIX, key, None, (), None
    last = segments[-1]
    if special == [len(segments) - 1] and last[0] == "*" and len(key) == len(uri) - len(last):
        return _PREFIX, key, None, (), (last[1:] or None)
    names = [seg[1:] for seg in segments if seg[:1] == ":" or (seg[:1] == "*" and seg != "*")]
    named = len(set(names)) == len(names) and all(n.isidentifier() for n in names)
    parts: list[str] = []
    for seg in segments:
        head = seg[:1]
        if head == ":" or (head == "*" and seg[1:]):
            group = f"?P<{seg[1:]}>" if named else ""
            parts.append(f"({group}[^/]+)" if head == ":" else f"({group}.*)")
        elif head == "*":
            parts.append("(?:.*)")
        else:
            parts.append(re.escape(seg))
    return _PATTERN, key, re.compile("/".join(parts), re.DOTALL), tuple(names), None


def _first(
    cands: tuple[_Cand, ...], method: str, path: str, remote_addr: str, lookup: Lookup
) -> Match | None:
    """The first candidate that passes, in pre-sorted order (the hot loop)."""
    for c in cands:
        if c.simple:
            return c.match
        methods = c.methods
        if methods is not None and method not in methods:
            continue
        addr_ok = c.remote_addrs
        if addr_ok is not None and not addr_ok(remote_addr):
            continue
        vars_ok = c.vars
        if vars_ok is not None and not vars_ok(lookup):
            continue
        regex = c.regex
        if regex is None:
            capture = c.capture
            if capture is None:
                return c.match
            return Match(c.entry, {capture: path[c.start :]}, c.uri)
        m = regex.fullmatch(path)
        if m is None:
            continue
        if c.by_name:
            return Match(c.entry, m.groupdict(), c.uri)
        names = c.names
        if not names:
            return c.match
        return Match(c.entry, dict(zip(names, m.groups(), strict=False)), c.uri)
    return None


def _exact_rank(item: tuple[int, _Cand]) -> tuple[int, int, int]:
    seq, c = item
    return (-c.entry.priority, c.entry.order, seq)


def _tree_rank(item: tuple[int, _Cand]) -> tuple[int, int, int, int]:
    seq, c = item
    return (-c.entry.priority, -c.rank_len, c.entry.order, seq)


class _PathTable:
    """The routes of one host (or of no host): exact uris in a dict, the rest in a radix tree."""

    __slots__ = ("_pending_exact", "_pending_tree", "exact", "label", "tree")

    def __init__(self, label: str | None) -> None:
        self.label = label
        self._pending_exact: dict[str, list[tuple[int, _Cand]]] = {}
        self._pending_tree: dict[str, list[tuple[int, _Cand]]] = {}
        self.exact: dict[str, tuple[_Cand, ...]] = {}
        self.tree: RadixTree[tuple[_Cand, ...]] | None = None

    def add(self, seq: int, cand: _Cand) -> None:
        """Collect a candidate (build time); ``seq`` is its position among all (route, uri)."""
        if cand.kind == _EXACT:
            self._pending_exact.setdefault(cand.path, []).append((seq, cand))
        else:
            self._pending_tree.setdefault(cand.key, []).append((seq, cand))

    def finish(self) -> None:
        """Sort every candidate list once and build the tree, so that matching never sorts."""
        self.exact = {
            uri: tuple(c for _, c in sorted(items, key=_exact_rank))
            for uri, items in self._pending_exact.items()
        }
        if self._pending_tree:
            tree: RadixTree[tuple[_Cand, ...]] = RadixTree()
            for key, items in self._pending_tree.items():
                tree.setdefault(key, tuple(c for _, c in sorted(items, key=_tree_rank)))
            tree.freeze()
            self.tree = tree
        self._pending_exact = {}
        self._pending_tree = {}

    def match(self, method: str, path: str, remote_addr: str, lookup: Lookup) -> Match | None:
        cands = self.exact.get(path)
        if cands is not None:
            found = _first(cands, method, path, remote_addr, lookup)
            if found is not None:
                return found
        tree = self.tree
        if tree is not None:
            node = tree.deepest(path)
            while node is not None:
                found = _first(node.value, method, path, remote_addr, lookup)  # type: ignore[arg-type]
                if found is not None:
                    return found
                node = node.up
        return None

    def candidates(self, path: str) -> list[_Cand]:
        """Every candidate whose uri matches ``path``, in the order match() tries them."""
        out: list[_Cand] = []
        for c in self.exact.get(path, ()):
            out.append(c)
        if self.tree is not None:
            for node in self.tree.prefixes_of(path):
                for c in node.value:  # type: ignore[union-attr]
                    if c._params(path) is not None:
                        out.append(c)
        return out


class Router:
    """All routes of one snapshot, indexed once; ``match`` is the per-request hot path.

    ``param_match`` turns on ``:name`` path parameters (APISIX's
    ``radixtree_uri_with_parameter``).  APISIX's default ``radixtree_host_uri`` router builds
    its trees with ``no_param_match``, where ``/user/:id`` is an exact uri that matches only
    the literal path ``/user/:id``; pass ``param_match=False`` for that behaviour.
    """

    __slots__ = ("_default", "_exact_hosts", "_host_cands", "_wild_hosts")

    def __init__(self, entries: Sequence[RouteEntry], *, param_match: bool = True) -> None:
        self._default = _PathTable(None)
        exact_hosts: dict[str, _PathTable] = {}
        wild: RadixTree[_PathTable] = RadixTree()
        host_cands: list[_Cand] = []
        seq = 0
        for entry in entries:
            cands = [_Cand(entry, uri, param_match) for uri in dict.fromkeys(entry.uris)]
            if entry.hosts is None:
                tables = [self._default]
            else:
                tables = []
                for host in dict.fromkeys(h.lower() for h in entry.hosts):
                    if host.startswith("*"):
                        # Stored reversed so that "every suffix of the host" becomes "every
                        # prefix of the reversed host": the tree's question.
                        tables.append(wild.setdefault(host[1:][::-1], _PathTable(host)))
                    else:
                        tables.append(exact_hosts.setdefault(host, _PathTable(host)))
                host_cands.extend(cands)
            for cand in cands:
                for table in tables:
                    table.add(seq, cand)
                seq += 1
        self._default.finish()
        for table in exact_hosts.values():
            table.finish()
        for node in wild.nodes():
            node.value.finish()  # type: ignore[union-attr]
        wild.freeze()
        self._exact_hosts = exact_hosts
        self._wild_hosts = wild if len(wild) else None
        self._host_cands = tuple(host_cands)

    def match(
        self, method: str, host: str, path: str, remote_addr: str, lookup: Lookup
    ) -> Match | None:
        """The route for this request, or None (then: global rules, then 404).

        The caller passes ``host`` lower-cased and without its port (nginx's ``$host``), and
        ``path`` already normalized (ando/http path normalization); the router does neither,
        because it would cost every request a copy of both strings.
        """
        if self._exact_hosts:
            table = self._exact_hosts.get(host)
            if table is not None:
                found = table.match(method, path, remote_addr, lookup)
                if found is not None:
                    return found
        wild = self._wild_hosts
        if wild is not None:
            node = wild.deepest(host[::-1])
            while node is not None:
                found = node.value.match(method, path, remote_addr, lookup)  # type: ignore[union-attr]
                if found is not None:
                    return found
                node = node.up
        return self._default.match(method, path, remote_addr, lookup)

    def _tables_for(self, host: str) -> list[_PathTable]:
        """The tables ``match`` would try for this host, in order."""
        tables: list[_PathTable] = []
        table = self._exact_hosts.get(host)
        if table is not None:
            tables.append(table)
        if self._wild_hosts is not None:
            tables.extend(node.value for node in self._wild_hosts.prefixes_of(host[::-1]))  # type: ignore[misc]
        tables.append(self._default)
        return tables

    def explain(
        self, method: str, host: str, path: str, remote_addr: str, lookup: Lookup
    ) -> list[Candidate]:
        """Every route whose uri matches the path, in the order ``match`` tries them, and why
        each one was or was not chosen (``ando explain``).  Cold path: it allocates freely.

        Routes after the winner are listed as shadowed (or with the predicate that would
        have refused them); routes whose hosts exclude this host come last.
        """
        out: list[Candidate] = []
        winner: _Cand | None = None
        for table in self._tables_for(host):
            for c in table.candidates(path):
                params = c.path_params(path)
                assert params is not None
                reason = c.reject_reason(method, remote_addr, lookup)
                matched = False
                if reason is None:
                    if winner is None:
                        winner = c
                        matched = True
                        reason = ""
                    else:
                        reason = f"shadowed by route {winner.entry.route_id!r} ({winner.uri})"
                out.append(Candidate(c.entry, c.uri, table.label, params, matched, reason))
        for c in self._host_cands:
            hosts = c.entry.hosts
            assert hosts is not None
            if any(_host_matches(h.lower(), host) for h in hosts):
                continue
            params = c.path_params(path)
            if params is None:
                continue
            reason = f"host {host!r} not in [{', '.join(hosts)}]"
            out.append(Candidate(c.entry, c.uri, None, params, False, reason))
        return out


def _host_matches(pattern: str, host: str) -> bool:
    """APISIX's host test: exact, or a raw suffix for ``*`` patterns (cold path only)."""
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return pattern == host
