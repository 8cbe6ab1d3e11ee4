"""The YAML stage: positions, substitution, duplicate keys, aliases, nesting, tags."""

from __future__ import annotations

import math

import pytest

from ando.config.yamlload import MAX_DEPTH, YamlError, load_yaml


def load(text: str, env: dict[str, str] | None = None):
    return load_yaml(text, "f.yaml", env or {})


def test_positions_of_values_and_keys_are_one_based():
    doc, diags = load("routes:\n  - uri: /a\n    upstream_id: 1\n")
    assert diags == []
    assert doc.data == {"routes": [{"uri": "/a", "upstream_id": 1}]}
    assert doc.positions[("routes", 0, "uri")] == (2, 10)
    assert doc.key_positions[("routes", 0, "upstream_id")] == (3, 5)
    assert doc.positions[("routes", 0)] == (2, 5)


def test_locate_falls_back_to_the_nearest_ancestor():
    doc, _ = load("a:\n  b: 1\n")
    assert doc.locate(("a", "b", "nope", 3)) == (2, 6)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("v: 12", 12),
        ("v: -3", -3),
        ("v: 0x1F", 31),
        ("v: 0o17", 15),
        ("v: 1.5", 1.5),
        ("v: 1e3", 1000.0),
        ("v: true", True),
        ("v: False", False),
        ("v: null", None),
        ("v: ~", None),
        ("v:", None),
        ("v: yes", "yes"),  # YAML 1.2: not a boolean
        ("v: '12'", "12"),
        ('v: "true"', "true"),
        ("v: !!str 12", "12"),
        ("v: !!int '7'", 7),
        ("v: 127.0.0.1:80", "127.0.0.1:80"),
        ("v: 2024-01-01", "2024-01-01"),
    ],
)
def test_yaml_1_2_core_scalars(text, value):
    doc, diags = load(text)
    assert diags == []
    assert doc.data["v"] == value
    assert type(doc.data["v"]) is type(value)


def test_infinity_and_nan():
    doc, _ = load("a: .inf\nb: -.Inf\nc: .nan\n")
    assert doc.data["a"] == math.inf and doc.data["b"] == -math.inf and math.isnan(doc.data["c"])


def test_duplicate_key_is_an_error_at_the_second_key():
    doc, diags = load("routes:\n  - uri: /a\n    uri: /b\n")
    assert [(d.line, d.column, d.path, d.message) for d in diags] == [
        (3, 5, ("routes", 0, "uri"), "duplicate key 'uri' (first defined at line 2)")
    ]
    assert doc.data["routes"][0]["uri"] == "/a"  # never last-wins


def test_env_substitution_in_values_keys_and_node_addresses():
    text = (
        "upstreams:\n"
        "  - id: ${{UP_ID}}\n"
        "    nodes:\n"
        '      "${{UP_HOST}}:${{UP_PORT:=8080}}": ${{WEIGHT:=2}}\n'
        "    name: 'port ${{UP_PORT:=8080}}'\n"
    )
    doc, diags = load(text, {"UP_ID": "42", "UP_HOST": "10.0.0.7"})
    assert diags == []
    up = doc.data["upstreams"][0]
    assert up["id"] == 42  # a plain scalar is re-read after substitution, as APISIX does
    assert up["nodes"] == {"10.0.0.7:8080": 2}
    assert up["name"] == "port 8080"  # quoted stays a string
    assert doc.positions[("upstreams", 0, "id")] == (2, 9)


def test_env_default_may_be_empty_and_quoted_values_stay_strings():
    doc, diags = load('a: "${{X:=}}"\nb: "${{N}}"\n', {"N": "5"})
    assert diags == [] and doc.data == {"a": "", "b": "5"}


def test_unset_variable_without_default_names_it_with_its_column():
    _, diags = load('ando:\n  listen: ["0.0.0.0:9080"]\nx: abc-${{MISSING_VAR}}\n')
    assert len(diags) == 1
    d = diags[0]
    assert (d.line, d.column, d.path) == (3, 8, ("x",))
    assert "MISSING_VAR" in d.message and "not set" in d.message


def test_substitution_cannot_inject_yaml_structure():
    doc, diags = load("a: ${{EVIL}}\n", {"EVIL": "x\nb: injected"})
    assert diags == [] and doc.data == {"a": "x\nb: injected"}


def test_end_marker_is_accepted_not_required():
    assert load("routes: []\n#END\n")[0].data == {"routes": []}
    assert load("routes: []\n")[0].data == {"routes": []}


def test_aliases_are_copied_and_merge_keys_work():
    text = "base: &b {type: roundrobin, nodes: {'a:1': 1}}\nu1: *b\nu2:\n  <<: *b\n  type: chash\n"
    doc, diags = load(text)
    assert diags == []
    assert doc.data["u1"] == {"type": "roundrobin", "nodes": {"a:1": 1}}
    assert doc.data["u2"] == {"type": "chash", "nodes": {"a:1": 1}}
    assert doc.data["u1"] is not doc.data["base"]  # later stages may fill defaults in place


def test_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(YamlError, match="alias bomb"):
        load("\n".join(lines) + "\n")


def test_absurd_nesting_is_refused_not_recursed():
    with pytest.raises(YamlError, match=f"deeper than {MAX_DEPTH}") as e:
        load("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert e.value.line == 1


def test_nesting_at_the_limit_is_fine():
    depth = MAX_DEPTH - 1
    doc, _ = load("[" * depth + "]" * depth)
    assert isinstance(doc.data, list)


@pytest.mark.parametrize("tag", ["!!python/object:os.system", "!custom", "!!binary"])
def test_arbitrary_tags_are_refused(tag):
    _, diags = load(f"a: {tag} x\n")
    assert len(diags) == 1 and "not allowed" in diags[0].message


def test_more_than_one_document_is_refused():
    with pytest.raises(YamlError, match="more than one YAML document"):
        load("a: 1\n---\nb: 2\n")


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: [1, 2\n", 2, 1),
        ("a: b: c\n", 1, 5),
        ("a:\n  - x\n y: 1\n", 3, 2),
        ("a: 'unterminated\n", 2, 1),
        ("\tb: 1\n", 1, 1),
    ],
)
def test_malformed_yaml_reports_a_position(text, line, column):
    with pytest.raises(YamlError) as e:
        load(text)
    assert e.value.message.startswith("invalid YAML: ")
    assert (e.value.line, e.value.column) == (line, column)


def test_unknown_alias_is_an_error():
    with pytest.raises(YamlError):
        load("a: *nope\n")


def test_empty_text_gives_no_data():
    doc, diags = load("")
    assert doc.data is None and diags == []
