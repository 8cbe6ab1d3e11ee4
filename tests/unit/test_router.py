"""ando.router.router: a request lands on the same route as in APISIX's radixtree_host_uri."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from ando.router.expr import compile_expr
from ando.router.ipset import IPSet
from ando.router.router import EMPTY_PARAMS, Candidate, RouteEntry, Router
from ando.router.tree import RadixTree


def route(
    route_id: str,
    *uris: str,
    methods: Iterable[str] | None = None,
    hosts: Iterable[str] | None = None,
    remote_addrs: Iterable[str] | None = None,
    vars: list[Any] | None = None,
    priority: int = 0,
) -> RouteEntry:
    """A RouteEntry built from APISIX-shaped fields, with the real ipset and expr compilers."""
    return RouteEntry(
        payload=route_id,
        route_id=route_id,
        uris=uris,
        methods=frozenset(methods) if methods is not None else None,
        hosts=tuple(hosts) if hosts is not None else None,
        remote_addrs=IPSet.parse(list(remote_addrs)) if remote_addrs is not None else None,
        vars=compile_expr(vars) if vars is not None else None,
        priority=priority,
    )


def numbered(entries: list[RouteEntry]) -> list[RouteEntry]:
    """Give each entry its position in the list as its config order, as the compiler does."""
    return [
        RouteEntry(
            e.payload, e.route_id, e.uris, e.methods, e.hosts, e.remote_addrs, e.vars,
            e.priority, i,
        )
        for i, e in enumerate(entries)
    ]  # fmt: skip


ROUTES = numbered(
    [
        # exact beats prefix; longer prefix beats shorter
        route("foo-star", "/foo*"),
        route("foo-slash-star", "/foo/*"),
        route("foo-exact", "/foo"),
        route("foo-bar-star", "/foo/bar/*"),
        route("foo-bar", "/foo/bar"),
        # raw string prefix vs directory prefix
        route("raw", "/raw*"),
        route("dir", "/dir/*"),
        # priority among equal prefixes, and a longer prefix beating a higher priority
        route("pri-lo", "/pri/*"),
        route("pri-hi", "/pri/*", priority=10),
        route("pri-deep", "/pri/deep/*", priority=-5),
        # priority among equal exact paths, and exact beating a higher-priority prefix
        route("same-a", "/same"),
        route("same-b", "/same", priority=5),
        route("same-prefix", "/same*", priority=100),
        # config order is the last tie-break
        route("tie-1", "/tie"),
        route("tie-2", "/tie"),
        route("tiep-1", "/tiep/*"),
        route("tiep-2", "/tiep/*"),
        # parameters: one segment; same key "/user/" ordered by uri length
        route("user-star", "/user/*"),
        route("user-id", "/user/:id"),
        route("user-posts", "/user/:id/posts"),
        route("user-me", "/user/me"),
        route("files", "/files/*path"),
        route("org-repo", "/orgs/:org/repos/:repo"),
        # a uris list
        route("multi", "/m/one", "/m/two/*"),
        # hosts: exact host table, then wildcard tables longest first, then host-less
        route("h-exact", "/h/*", hosts=["api.example.com"]),
        route("h-wild", "/h/exact", hosts=["*.example.com"]),
        route("h-wild-deep", "/h/*", hosts=["*.eu.example.com"]),
        route("h-none", "/h/exact"),
        # a host route whose methods fail falls back to a host-less route
        route("hm-get", "/hm", methods=["GET"], hosts=["get.example.com"]),
        route("hm-any", "/hm"),
        # methods
        route("meth-get", "/meth", methods=["GET", "HEAD"]),
        route("meth-post", "/meth", methods=["POST"]),
        # remote_addrs
        route("ra-lan", "/ra", remote_addrs=["10.0.0.0/8", "::1"], priority=1),
        route("ra-any", "/ra"),
        # vars: an exact route refused by vars falls through to the prefix route
        route("v-json", "/v", vars=[["arg_format", "==", "json"]]),
        route("v-any", "/v*"),
    ]
)

# (method, host, path, remote_addr, vars, expected route id)
REQUESTS: list[tuple[str, str, str, str, dict[str, str], str | None]] = [
    ("GET", "a.com", "/foo", "1.2.3.4", {}, "foo-exact"),
    ("GET", "a.com", "/foobar", "1.2.3.4", {}, "foo-star"),
    ("GET", "a.com", "/foo/", "1.2.3.4", {}, "foo-slash-star"),
    ("GET", "a.com", "/foo/x", "1.2.3.4", {}, "foo-slash-star"),
    ("GET", "a.com", "/foo/bar", "1.2.3.4", {}, "foo-bar"),
    ("GET", "a.com", "/foo/bar/", "1.2.3.4", {}, "foo-bar-star"),
    ("GET", "a.com", "/foo/bar/baz/qux", "1.2.3.4", {}, "foo-bar-star"),
    ("GET", "a.com", "/foo/barn", "1.2.3.4", {}, "foo-slash-star"),
    ("GET", "a.com", "/raw", "1.2.3.4", {}, "raw"),
    ("GET", "a.com", "/rawbar", "1.2.3.4", {}, "raw"),
    ("GET", "a.com", "/raw/x", "1.2.3.4", {}, "raw"),
    ("GET", "a.com", "/dir", "1.2.3.4", {}, None),
    ("GET", "a.com", "/dir/", "1.2.3.4", {}, "dir"),
    ("GET", "a.com", "/dirx", "1.2.3.4", {}, None),
    ("GET", "a.com", "/pri/x", "1.2.3.4", {}, "pri-hi"),
    ("GET", "a.com", "/pri/deep/x", "1.2.3.4", {}, "pri-deep"),
    ("GET", "a.com", "/same", "1.2.3.4", {}, "same-b"),
    ("GET", "a.com", "/samex", "1.2.3.4", {}, "same-prefix"),
    ("GET", "a.com", "/tie", "1.2.3.4", {}, "tie-1"),
    ("GET", "a.com", "/tiep/x", "1.2.3.4", {}, "tiep-1"),
    ("GET", "a.com", "/user/42", "1.2.3.4", {}, "user-id"),
    ("GET", "a.com", "/user/me", "1.2.3.4", {}, "user-me"),
    ("GET", "a.com", "/user/42/posts", "1.2.3.4", {}, "user-posts"),
    ("GET", "a.com", "/user/42/likes", "1.2.3.4", {}, "user-star"),
    ("GET", "a.com", "/user/", "1.2.3.4", {}, "user-star"),
    ("GET", "a.com", "/user/42/", "1.2.3.4", {}, "user-star"),
    ("GET", "a.com", "/files/a/b.txt", "1.2.3.4", {}, "files"),
    ("GET", "a.com", "/orgs/apache/repos/apisix", "1.2.3.4", {}, "org-repo"),
    ("GET", "a.com", "/orgs/apache/repos", "1.2.3.4", {}, None),
    ("GET", "a.com", "/m/one", "1.2.3.4", {}, "multi"),
    ("GET", "a.com", "/m/two/x", "1.2.3.4", {}, "multi"),
    ("GET", "a.com", "/m/three", "1.2.3.4", {}, None),
    # hosts
    ("GET", "api.example.com", "/h/exact", "1.2.3.4", {}, "h-exact"),
    ("GET", "x.example.com", "/h/exact", "1.2.3.4", {}, "h-wild"),
    ("GET", "a.b.example.com", "/h/exact", "1.2.3.4", {}, "h-wild"),
    ("GET", "example.com", "/h/exact", "1.2.3.4", {}, "h-none"),
    ("GET", "x.eu.example.com", "/h/exact", "1.2.3.4", {}, "h-wild-deep"),
    ("GET", "x.example.com", "/h/other", "1.2.3.4", {}, None),
    ("GET", "other.com", "/h/exact", "1.2.3.4", {}, "h-none"),
    ("GET", "notexample.com", "/h/exact", "1.2.3.4", {}, "h-none"),
    ("GET", "get.example.com", "/hm", "1.2.3.4", {}, "hm-get"),
    ("POST", "get.example.com", "/hm", "1.2.3.4", {}, "hm-any"),
    # methods
    ("GET", "a.com", "/meth", "1.2.3.4", {}, "meth-get"),
    ("HEAD", "a.com", "/meth", "1.2.3.4", {}, "meth-get"),
    ("POST", "a.com", "/meth", "1.2.3.4", {}, "meth-post"),
    ("PUT", "a.com", "/meth", "1.2.3.4", {}, None),
    # remote_addrs
    ("GET", "a.com", "/ra", "10.1.2.3", {}, "ra-lan"),
    ("GET", "a.com", "/ra", "::1", {}, "ra-lan"),
    ("GET", "a.com", "/ra", "192.168.0.1", {}, "ra-any"),
    # vars
    ("GET", "a.com", "/v", "1.2.3.4", {"arg_format": "json"}, "v-json"),
    ("GET", "a.com", "/v", "1.2.3.4", {"arg_format": "xml"}, "v-any"),
    ("GET", "a.com", "/v", "1.2.3.4", {}, "v-any"),
    # nothing at all
    ("GET", "a.com", "/nothing", "1.2.3.4", {}, None),
    ("GET", "a.com", "/", "1.2.3.4", {}, None),
]

ROUTER = Router(ROUTES)


def winner(router: Router, path: str, host: str = "h", method: str = "GET") -> str | None:
    """The id of the route a plain request lands on, or None."""
    found = router.match(method, host, path, "1.2.3.4", {}.get)
    return found.entry.route_id if found else None


@pytest.mark.parametrize(
    ("method", "host", "path", "addr", "variables", "expected"),
    REQUESTS,
    ids=[f"{r[0]} {r[1]}{r[2]}" for r in REQUESTS],
)
def test_match(
    method: str, host: str, path: str, addr: str, variables: dict[str, str], expected: str | None
) -> None:
    found = ROUTER.match(method, host, path, addr, variables.get)
    assert (found.entry.route_id if found else None) == expected
    # explain agrees with match about the winner
    winners = [c for c in ROUTER.explain(method, host, path, addr, variables.get) if c.matched]
    assert [c.entry.route_id for c in winners] == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/user/42", {"id": "42"}),
        ("/user/42/posts", {"id": "42"}),
        ("/orgs/apache/repos/apisix", {"org": "apache", "repo": "apisix"}),
        ("/files/a/b.txt", {"path": "a/b.txt"}),
        ("/files/", {"path": ""}),
    ],
)
def test_params(path: str, params: dict[str, str]) -> None:
    found = ROUTER.match("GET", "a.com", path, "1.2.3.4", {}.get)
    assert found is not None
    assert dict(found.params) == params


def test_param_names_the_regex_cannot_name() -> None:
    router = Router(
        numbered(
            [
                route("dup", "/d/:x/:x"),
                route("dotted", "/f/:name.json"),
                route("mid-star", "/s/*rest/end"),
                route("anon-star", "/t/*/end"),
            ]
        )
    )
    cases = {
        "/d/1/2": {"x": "2"},  # a repeated name: the last one wins, as in radixtree
        "/f/readme": {"name.json": "readme"},  # ":name.json" names the whole segment
        "/s/a/b/end": {"rest": "a/b"},
        "/t/a/b/end": {},
    }
    for path, params in cases.items():
        found = router.match("GET", "h", path, "", {}.get)
        assert found is not None and dict(found.params) == params, path
    assert winner(router, "/s/a/b/other") is None


def test_no_params_share_one_constant() -> None:
    first = ROUTER.match("GET", "a.com", "/foo", "1.2.3.4", {}.get)
    second = ROUTER.match("GET", "a.com", "/foo/x", "1.2.3.4", {}.get)
    assert first is not None and second is not None
    assert first.params is EMPTY_PARAMS and second.params is EMPTY_PARAMS
    # the no-params Match is prebuilt: matching twice returns the same object
    assert ROUTER.match("GET", "a.com", "/foo", "1.2.3.4", {}.get) is first
    assert first.uri == "/foo" and second.uri == "/foo/*"


def test_param_match_off_is_apisix_default_router() -> None:
    # radixtree_host_uri builds with no_param_match: ":id" is literal text in an exact uri.
    entries = numbered([route("lit", "/user/:id"), route("any", "/user/*")])
    router = Router(entries, param_match=False)
    assert winner(router, "/user/:id") == "lit"
    assert winner(router, "/user/42") == "any"


def test_radixtree_quirks_kept() -> None:
    # Only a segment that *starts* with "*" is a pattern; otherwise the key is a prefix.
    # A ":" that starts no segment is text (APISIX's default router has no parameters at all),
    # so "/a-:id" is exact rather than radixtree_uri_with_parameter's prefix "/a-".
    router = Router(numbered([route("dash", "/a-:id"), route("mid", "/b*c")]))
    assert winner(router, "/a-anything/at/all") is None
    assert winner(router, "/a-:id") == "dash"
    assert winner(router, "/bxyz") == "mid"


def test_empty_hosts_never_match_and_empty_methods_match_any() -> None:
    router = Router(
        numbered(
            [
                RouteEntry("x", "nohost", ("/x",), None, (), None, None),
                RouteEntry("y", "anymethod", ("/y",), frozenset(), None, None, None),
            ]
        )
    )
    assert winner(router, "/x") is None
    assert winner(router, "/y", method="PURGE") == "anymethod"


def test_wildcard_host_is_case_insensitive_at_build() -> None:
    router = Router(numbered([route("w", "/", hosts=["*.Example.COM"])]))
    assert winner(router, "/", host="a.example.com") == "w"


def summary(cands: list[Candidate]) -> list[tuple[str, str, str | None, bool, str]]:
    return [(c.entry.route_id, c.uri, c.host, c.matched, c.reason) for c in cands]


def test_explain_method_then_fallback() -> None:
    got = ROUTER.explain("POST", "get.example.com", "/hm", "1.2.3.4", {}.get)
    assert summary(got) == [
        ("hm-get", "/hm", "get.example.com", False, "method POST not in [GET]"),
        ("hm-any", "/hm", None, True, ""),
    ]


def test_explain_host_mismatch_listed_last() -> None:
    got = ROUTER.explain("GET", "other.com", "/hm", "1.2.3.4", {}.get)
    assert summary(got) == [
        ("hm-any", "/hm", None, True, ""),
        ("hm-get", "/hm", None, False, "host 'other.com' not in [get.example.com]"),
    ]


def test_explain_host_tables_in_order() -> None:
    got = ROUTER.explain("GET", "x.eu.example.com", "/h/exact", "1.2.3.4", {}.get)
    assert summary(got) == [
        ("h-wild-deep", "/h/*", "*.eu.example.com", True, ""),
        ("h-wild", "/h/exact", "*.example.com", False, "shadowed by route 'h-wild-deep' (/h/*)"),
        ("h-none", "/h/exact", None, False, "shadowed by route 'h-wild-deep' (/h/*)"),
        ("h-exact", "/h/*", None, False, "host 'x.eu.example.com' not in [api.example.com]"),
    ]


def test_explain_order_and_shadowing() -> None:
    got = ROUTER.explain("GET", "a.com", "/pri/deep/x", "1.2.3.4", {}.get)
    assert summary(got) == [
        ("pri-deep", "/pri/deep/*", None, True, ""),
        ("pri-hi", "/pri/*", None, False, "shadowed by route 'pri-deep' (/pri/deep/*)"),
        ("pri-lo", "/pri/*", None, False, "shadowed by route 'pri-deep' (/pri/deep/*)"),
    ]


def test_explain_predicates() -> None:
    got = ROUTER.explain("GET", "a.com", "/ra", "192.168.0.1", {}.get)
    assert summary(got) == [
        ("ra-lan", "/ra", None, False, "remote_addr 192.168.0.1 not in remote_addrs"),
        ("ra-any", "/ra", None, True, ""),
    ]
    got = ROUTER.explain("GET", "a.com", "/v", "1.2.3.4", {}.get)
    assert summary(got) == [
        ("v-json", "/v", None, False, "vars did not match"),
        ("v-any", "/v*", None, True, ""),
    ]
    got = ROUTER.explain("GET", "a.com", "/user/42", "1.2.3.4", {}.get)
    assert [(c.entry.route_id, dict(c.params)) for c in got] == [
        ("user-id", {"id": "42"}),
        ("user-star", {}),
    ]
    assert ROUTER.explain("GET", "a.com", "/nothing", "1.2.3.4", {}.get) == []


def test_ten_thousand_routes() -> None:
    n = 10_000
    entries: list[RouteEntry] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            entries.append(route(f"exact{i}", f"/svc{i}/items"))
        elif kind == 1:
            entries.append(route(f"prefix{i}", f"/pfx{i}/*"))
        elif kind == 2:
            entries.append(route(f"param{i}", f"/prm{i}/:id/detail"))
        else:
            entries.append(route(f"host{i}", "/api/*", hosts=[f"h{i}.example.com"]))
    entries.append(route("fallback", "/*"))
    router = Router(numbered(entries))
    for i in range(0, n, 7):
        kind = i % 4
        if kind == 0:
            host, path, want = "x", f"/svc{i}/items", f"exact{i}"
        elif kind == 1:
            host, path, want = "x", f"/pfx{i}/a/b", f"prefix{i}"
        elif kind == 2:
            host, path, want = "x", f"/prm{i}/7/detail", f"param{i}"
        else:
            host, path, want = f"h{i}.example.com", "/api/v1", f"host{i}"
        found = router.match("GET", host, path, "1.2.3.4", {}.get)
        assert found is not None and found.entry.route_id == want, (path, host)
    # near misses fall through to the catch-all
    for host, path in [("x", "/svc0/items/"), ("x", "/prm2/7"), ("h4.example.com", "/api/v1")]:
        found = router.match("GET", host, path, "1.2.3.4", {}.get)
        assert found is not None and found.entry.route_id == "fallback", (host, path)
    found = router.match("GET", "x", "/prm2/7/detail", "", {}.get)
    assert found is not None and dict(found.params) == {"id": "7"}


def test_radix_tree_prefixes() -> None:
    tree: RadixTree[str] = RadixTree()
    for key in ["/a", "/ab", "/abc/", "/b", "", "/abd"]:
        tree.setdefault(key, key)
    tree.freeze()
    assert [n.value for n in tree.prefixes_of("/abc/x")] == ["/abc/", "/ab", "/a", ""]
    assert [n.value for n in tree.prefixes_of("/abd")] == ["/abd", "/ab", "/a", ""]
    assert [n.value for n in tree.prefixes_of("/x")] == [""]
    assert tree.get("/ab") == "/ab" and tree.get("/abx") is None and tree.get("/") is None
    assert len(tree) == 6
