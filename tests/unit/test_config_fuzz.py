"""Random damage to a valid config: the validator must always answer with a Snapshot or with
diagnostics, never an exception; and the two schema validators must always agree."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ando.config.diagnostics import ConfigError
from ando.config.schemas import resource_checker
from ando.config.snapshot import Snapshot
from ando.config.source import snapshot_from_text

from .test_compile import CATALOG

BASE: dict[str, Any] = {
    "ando": {"listen": ["127.0.0.1:9080"], "workers": 2, "limits": {"max_body_size": 1024}},
    "upstreams": [
        {
            "id": "u1",
            "type": "chash",
            "hash_on": "header",
            "key": "X-User",
            "nodes": {"127.0.0.1:1980": 1, "127.0.0.2:1980": 2},
            "timeout": {"connect": 1, "send": 2, "read": 3},
            "retries": 1,
            "checks": {"active": {"http_path": "/status", "healthy": {"interval": 2}}},
        },
        {"id": "u2", "nodes": [{"host": "::1", "port": 80, "weight": 1, "priority": 1}]},
    ],
    "services": [{"id": "s1", "upstream_id": "u1", "hosts": ["a.example.com"]}],
    "routes": [
        {"id": "r1", "uri": "/a/*", "methods": ["GET"], "upstream_id": "u2", "priority": 3},
        {
            "id": "r2",
            "uris": ["/b", "/c/:id"],
            "service_id": "s1",
            "vars": [
                ["arg_x", "==", "1"],
                ["OR", ["http_a", "~~", "^z"], ["remote_addr", "ipmatch", "10.0.0.0/8"]],
            ],
            "remote_addrs": ["127.0.0.1", "::1/128"],
            "plugins": {"key-auth": {"header": "X-Key"}},
        },
        {
            "uri": "/d",
            "host": "*.example.com",
            "upstream": {"nodes": {"example.org:443": 1}, "scheme": "https"},
        },
    ],
    "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k1"}}, "group_id": "g"}],
    "consumer_groups": [{"id": "g", "plugins": {"key-auth": {}}}],
    "plugin_configs": [{"id": "pc", "plugins": {"key-auth": {}}}],
    "global_rules": [{"id": "gr", "plugins": {"key-auth": {"hide_credentials": True}}}],
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_configs(draw) -> Any:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "dup"]))
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return data


def _answer(text: str) -> Snapshot | ConfigError:
    try:
        return snapshot_from_text(text, "fuzz.yaml", environ={}, catalog=CATALOG)
    except ConfigError as e:
        for d in e.diagnostics:  # every diagnostic must render and point somewhere sensible
            assert d.format() and d.line >= 0 and d.column >= 0
        assert e.diagnostics
        return e


def test_the_base_config_is_valid():
    assert isinstance(_answer(orjson.dumps(BASE).decode()), Snapshot)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_data_yields_snapshot_or_diagnostics(data):
    _answer(orjson.dumps(data).decode())  # JSON is YAML: the same loader reads it


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_text_yields_snapshot_or_diagnostics(data):
    text = (Path(__file__).parents[2] / "config" / "ando.yaml").read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:pos] + data.draw(st.text(max_size=6)) + text[pos:]
        else:
            text = text[:pos] + text[pos + data.draw(st.integers(1, 20)) :]
    _answer(text)


KINDS = {
    "route": ("routes", 1),
    "upstream": ("upstreams", 0),
    "service": ("services", 0),
    "consumer": ("consumers", 0),
    "consumer_group": ("consumer_groups", 0),
    "node": ("ando", None),
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(KINDS)), st.data())
def test_fast_and_detailed_validators_agree(kind, data):
    section, index = KINDS[kind]
    instance = copy.deepcopy(BASE[section] if index is None else BASE[section][index])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(instance)
        path = data.draw(st.sampled_from(paths))
        if not path:
            continue
        parent: Any = instance
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(json_values)
        else:
            del parent[path[-1]]
    checker = resource_checker(kind)
    assert checker.is_valid_fast(copy.deepcopy(instance)) == checker.is_valid_detailed(instance), (
        instance
    )
