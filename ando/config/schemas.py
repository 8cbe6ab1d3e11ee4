"""The JSON Schemas under `schemas/`, loaded once, and checkers that turn failures into messages.

Two validators answer for the same schema: fastjsonschema compiles it to Python code and clears a
valid resource ~12x faster than jsonschema (the difference between 0.1 s and 1.3 s on 10,000
routes); jsonschema runs only on what the fast pass refused, to list every problem with a path.
The schema files keep to the keywords both implement identically (see schemas/README.md), and a
test feeds both the same mutated configs to prove they agree.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

import fastjsonschema
import orjson

from ando.config.diagnostics import Path

if TYPE_CHECKING:  # jsonschema costs ~140 ms to import; only a refused config needs it
    import jsonschema

Defaulter = Callable[[Any], None]


def schemas_dir() -> FsPath:
    """Where the schema files are: next to the package in a checkout, inside a PyInstaller bundle,
    or wherever ANDO_SCHEMAS_DIR points."""
    override = os.environ.get("ANDO_SCHEMAS_DIR")
    candidates = [FsPath(override)] if override else []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(FsPath(bundle) / "schemas")
    candidates.append(FsPath(__file__).resolve().parents[2] / "schemas")
    for c in candidates:
        if (c / "ando.schema.json").is_file():
            return c
    raise FileNotFoundError("Ando's schemas/ directory was not found (set ANDO_SCHEMAS_DIR)")


def read_schema_file(path: FsPath) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a schema must be a JSON object")
    return data


def bundle(schema: dict[str, Any], base: FsPath, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Inline every `$ref` (ours are never recursive) so each resource schema stands alone: both
    validators then see exactly the same document, with no registry to keep in step."""
    root = schema

    def resolve(node: Any, here: FsPath, doc: dict[str, Any], seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(v, here, doc, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            file_part, _, frag = ref.partition("#")
            target_file = (here.parent / file_part).resolve() if file_part else here
            key = f"{target_file}#{frag}"
            if key in seen:
                raise ValueError(f"recursive $ref {ref} in {here}")
            target_doc = read_schema_file(target_file) if file_part else doc
            target: Any = target_doc
            for part in [p for p in frag.split("/") if p]:
                target = target[part.replace("~1", "/").replace("~0", "~")]
            resolved = resolve(target, target_file, target_doc, (*seen, key))
            resolved = {k: v for k, v in resolved.items() if k not in ("$schema", "$id", "$defs")}
            if "description" in node:
                resolved["description"] = node["description"]
            return resolved
        return {k: resolve(v, here, doc, seen) for k, v in node.items() if k != "$defs"}

    out = resolve(root, base, root, _seen)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return out


# --- messages -------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: Any) -> str:
    """`; did you mean 'x'?` when a close valid name exists, else empty."""
    names = [c for c in choices if isinstance(c, str)]
    match = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


@dataclass(frozen=True, slots=True)
class Problem:
    """One schema failure: where (relative to the checked instance) and what."""

    path: Path
    message: str
    at_key: bool = False  # point at the key itself (unknown field), not its value


def _condition(schema: dict[str, Any]) -> str:
    """Describe an `if` clause like `{"properties": {"type": {"const": "chash"}}}`."""
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    parts = []
    for name, sub in props.items():
        if isinstance(sub, dict) and "const" in sub:
            parts.append(f"{name} is {_short(sub['const'])}")
        elif isinstance(sub, dict) and "enum" in sub:
            parts.append(f"{name} is one of {', '.join(_short(v) for v in sub['enum'])}")
    return " and ".join(parts)


def _explain(error: jsonschema.ValidationError, root_schema: dict[str, Any]) -> Iterator[Problem]:
    path: Path = tuple(error.absolute_path)
    v = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "propertyNames" in error.relative_schema_path and isinstance(value, str):
        # jsonschema reports a bad key at its object; point at the key itself.
        title = schema.get("title")
        what = f"is not a valid {title}" if title else f"is not an allowed key ({error.message})"
        yield Problem((*path, value), f"{_short(value)} {what}", at_key=True)
        return
    if v == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        import re

        for key in value:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            yield Problem((*path, key), f"unknown field '{key}'{suggest(key, known)}", at_key=True)
        return
    if v == "required":
        missing = [r for r in error.validator_value if isinstance(value, dict) and r not in value]
        sp = list(error.schema_path)
        conds = []
        for i, part in enumerate(sp):  # every enclosing if/then contributes its condition
            if part == "then":
                parent = _schema_at(root_schema, sp[:i])
                cond = _condition(parent.get("if", {})) if isinstance(parent, dict) else ""
                if cond:
                    conds.append(cond)
        when = f" (required when {' and '.join(conds)})" if conds else ""
        for name in missing:
            yield Problem(path, f"missing required field '{name}'{when}")
        return
    if v == "type":
        want = error.validator_value
        want_s = " or ".join(want) if isinstance(want, list) else str(want)
        yield Problem(path, f"expected {want_s}, got {_json_type(value)} {_short(value)}")
        return
    if v == "enum":
        choices = error.validator_value
        hint = suggest(value, choices) if isinstance(value, str) else ""
        yield Problem(
            path, f"{_short(value)} is not one of {', '.join(_short(c) for c in choices)}{hint}"
        )
        return
    if v == "const":
        yield Problem(path, f"must be {_short(error.validator_value)}, got {_short(value)}")
        return
    if v in ("anyOf", "oneOf"):
        yield from _explain_alternatives(error, root_schema)
        return
    if v == "not":
        banned = error.validator_value
        if isinstance(banned, dict) and list(banned) == ["required"]:
            names = " and ".join(f"'{n}'" for n in banned["required"])
            yield Problem(path, f"fields {names} cannot be used together; choose one")
            return
        yield Problem(path, f"{_short(value)} is not allowed here")
        return
    simple = {
        "minimum": lambda: f"must be >= {error.validator_value}, got {_short(value)}",
        "maximum": lambda: f"must be <= {error.validator_value}, got {_short(value)}",
        "exclusiveMinimum": lambda: f"must be > {error.validator_value}, got {_short(value)}",
        "exclusiveMaximum": lambda: f"must be < {error.validator_value}, got {_short(value)}",
        "minLength": lambda: f"must be at least {error.validator_value} characters long",
        "maxLength": lambda: f"must be at most {error.validator_value} characters long",
        "minItems": lambda: f"must have at least {error.validator_value} item(s)",
        "maxItems": lambda: f"must have at most {error.validator_value} item(s)",
        "uniqueItems": lambda: "has duplicate items",
        "pattern": lambda: (
            f"{_short(value)} is not a valid {schema['title']}"
            if "title" in schema
            else f"{_short(value)} does not match the pattern {error.validator_value}"
        ),
        "minProperties": lambda: f"must have at least {error.validator_value} field(s)",
        "maxProperties": lambda: f"must have at most {error.validator_value} field(s)",
        "propertyNames": lambda: f"has an invalid key: {error.message}",
    }
    make = simple.get(str(v))
    yield Problem(path, make() if make else error.message)


def _schema_at(root: dict[str, Any], schema_path: list[Any]) -> Any:
    node: Any = root
    for part in schema_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node


def _explain_alternatives(
    error: jsonschema.ValidationError, root_schema: dict[str, Any]
) -> Iterator[Problem]:
    """anyOf/oneOf: find the alternative the author meant and report its errors, rather than
    jsonschema's 'is not valid under any of the given schemas'."""
    path: Path = tuple(error.absolute_path)
    branches = error.validator_value
    value = error.instance
    only_required = all(isinstance(b, dict) and set(b) == {"required"} for b in branches)
    if error.validator == "oneOf" and not error.context:
        if only_required and isinstance(value, dict):
            present = [f"'{n}'" for b in branches for n in b["required"] if n in value]
            yield Problem(
                path, f"fields {' and '.join(present)} cannot be used together; choose one"
            )
        else:
            yield Problem(path, f"{_short(value)} matches more than one allowed form")
        return
    # Alternatives that differ only by which fields are required (uri | uris, ...).
    if only_required:
        options = [" + ".join(f"'{n}'" for n in b["required"]) for b in branches]
        yield Problem(path, f"needs one of: {', '.join(options)}")
        return
    by_branch: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    jtype = _json_type(value)
    # Prefer a branch whose declared type fits the value (e.g. the list form of `nodes`).
    fitting = [
        i
        for i, b in enumerate(branches)
        if isinstance(b, dict)
        and "type" in b
        and (b["type"] == jtype or (b["type"] == "number" and jtype == "integer"))
    ]
    if len(fitting) == 1 and fitting[0] in by_branch:
        for sub in by_branch[fitting[0]]:
            yield from _explain(sub, root_schema)
        return
    if not fitting and all(isinstance(b, dict) and "type" in b for b in branches):
        kinds = " or ".join(sorted({str(b["type"]) for b in branches}))
        yield Problem(path, f"expected {kinds}, got {jtype} {_short(value)}")
        return
    from jsonschema.exceptions import best_match

    best = best_match(error.context or [error])
    if best is error:
        yield Problem(path, error.message)
    else:
        yield from _explain(best, root_schema)


# --- defaults -------------------------------------------------------------------------------


def compile_defaults(schema: Any) -> Defaulter | None:
    """Build a function that fills a valid instance's missing fields from the schema's `default`s.
    Returns None when nothing under this schema has a default, so most subtrees cost nothing."""
    if not isinstance(schema, dict):
        return None
    steps: list[Defaulter] = []
    props = schema.get("properties")
    if isinstance(props, dict):
        for name, sub in props.items():
            if isinstance(sub, dict) and "default" in sub:
                default = sub["default"]
                mutable = isinstance(default, dict | list)

                def set_default(
                    inst: Any, name: str = name, default: Any = default, mutable: bool = mutable
                ) -> None:
                    if isinstance(inst, dict) and name not in inst:
                        inst[name] = copy.deepcopy(default) if mutable else default

                steps.append(set_default)
            inner = compile_defaults(sub)
            if inner is not None:

                def descend(inst: Any, name: str = name, inner: Defaulter = inner) -> None:
                    if isinstance(inst, dict) and name in inst:
                        inner(inst[name])

                steps.append(descend)
    items = schema.get("items")
    if isinstance(items, dict):
        inner_items = compile_defaults(items)
        if inner_items is not None:

            def each(inst: Any, inner: Defaulter = inner_items) -> None:
                if isinstance(inst, list):
                    for v in inst:
                        inner(v)

            steps.append(each)
    for combinator in ("anyOf", "oneOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list):
            typed = [(b.get("type"), compile_defaults(b)) for b in branches if isinstance(b, dict)]
            typed = [(t, f) for t, f in typed if f is not None and isinstance(t, str)]
            if typed:

                def by_type(inst: Any, typed: list[tuple[str, Defaulter]] = typed) -> None:
                    jt = _json_type(inst)
                    for t, f in typed:
                        if t == jt:
                            f(inst)
                            return

                steps.append(by_type)
    for sub in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        f = compile_defaults(sub)
        if f is not None:
            steps.append(f)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def run_all(inst: Any, steps: list[Defaulter] = steps) -> None:
        for step in steps:
            step(inst)

    return run_all


# --- the checker ----------------------------------------------------------------------------


class SchemaChecker:
    """Checks instances against one (bundled) schema: fast pass first, detailed pass on failure."""

    __slots__ = ("_defaults", "_detailed_validator", "_fast", "schema")

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        fast_schema = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
        self._fast = fastjsonschema.compile(fast_schema, use_default=False, use_formats=False)
        self._detailed_validator: jsonschema.Draft202012Validator | None = None
        self._defaults = compile_defaults(schema)

    @property
    def _detailed(self) -> jsonschema.Draft202012Validator:
        if self._detailed_validator is None:
            from jsonschema import Draft202012Validator

            self._detailed_validator = Draft202012Validator(self.schema)
        return self._detailed_validator

    def problems(self, instance: Any) -> list[Problem]:
        try:
            self._fast(instance)
            return []
        except fastjsonschema.JsonSchemaException as fast_error:
            found = [
                p
                for e in sorted(self._detailed.iter_errors(instance), key=lambda e: list(e.path))
                for p in _explain(e, self.schema)
            ]
            if not found:  # the two validators disagree: trust the refusal, keep its message
                found = [Problem((), str(fast_error.message))]
            return found
        except (RecursionError, TypeError, ValueError) as e:
            return [Problem((), f"cannot be checked: {e}")]

    def apply_defaults(self, instance: Any) -> None:
        if self._defaults is not None:
            self._defaults(instance)

    def is_valid_detailed(self, instance: Any) -> bool:
        """jsonschema's verdict alone; the agreement test compares it with the fast pass."""
        return self._detailed.is_valid(instance)

    def is_valid_fast(self, instance: Any) -> bool:
        try:
            self._fast(instance)
            return True
        except fastjsonschema.JsonSchemaException:
            return False


@cache
def resource_checker(kind: str) -> SchemaChecker:
    """The checker for one resource kind (`route`, `upstream`, `node`, ...), built once."""
    path = schemas_dir() / "resources" / f"{kind}.json"
    return SchemaChecker(bundle(read_schema_file(path), path))


@cache
def document_schema() -> dict[str, Any]:
    """`ando.schema.json`, bundled: the list of top-level sections and their descriptions."""
    path = schemas_dir() / "ando.schema.json"
    return bundle(read_schema_file(path), path)


def schema_names() -> list[str]:
    """Names `ando schema NAME` accepts: `ando`, each resource kind, and each plugin."""
    base = schemas_dir()
    names = ["ando"]
    names += sorted(p.stem for p in (base / "resources").glob("*.json"))
    names += sorted(f"plugins/{p.stem}" for p in (base / "plugins").glob("*.json"))
    return names


def schema_file(name: str) -> FsPath | None:
    base = schemas_dir()
    if name in ("ando", "ando.schema.json"):
        return base / "ando.schema.json"
    for candidate in (base / "resources" / f"{name}.json", base / f"{name}.json"):
        if candidate.is_file() and candidate.resolve().is_relative_to(base.resolve()):
            return candidate
    return None
