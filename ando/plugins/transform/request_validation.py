"""request-validation: refuse requests whose headers or body do not match a JSON Schema.

APISIX's request-validation (priority 2800, rewrite phase, type "validation"). `header_schema`
validates the request headers as an object of lower-case name -> value (a list of values when a
header is repeated, as ngx.req.get_headers gives them); `body_schema` validates the body, parsed
as application/x-www-form-urlencoded when the Content-Type's media type says so (any case, any
parameters) and as JSON otherwise. A refusal is `rejected_code` (400) with `rejected_msg` as a
plain-text body, or, without one, the validator's message in APISIX's wording
(`property "name" is required`, `property "age" validation failed: wrong type: expected
integer, got string`, ...). A body_schema with no body, or with two Content-Type headers, is
refused too (no body and no `rejected_msg`: nginx's HTML page for `rejected_code`, as APISIX's
bare exit sends).

Schemas are compiled once per configuration (fastjsonschema for the verdict, jsonschema only to
word a refusal); `ando validate` refuses an invalid schema at its path. Draft 7 applies unless a
schema names its own `$schema`; formats are not asserted, and references must stay inside the
schema (`#...`): a schema never makes the gateway fetch anything.

The body reaches the upstream byte for byte. APISIX re-encodes a validated JSON body so that the
JSON it checked is the JSON the upstream parses (duplicate keys, "JSON interoperability"); Ando
gets the same guarantee without changing the body by refusing what parsers disagree on: duplicate
object keys, NaN/Infinity, and bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import fastjsonschema
from jsonschema import Draft7Validator, ValidationError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext
from ando.plugins.pages import nginx_page
from ando.plugins.vartemplate import lua_tostring

_FORM = "application/x-www-form-urlencoded"
_FAST_DRAFTS = ("draft-04", "draft-06", "draft-07")
_DRAFT7 = "http://json-schema.org/draft-07/schema#"


# --- compiling a user's schema ------------------------------------------------------------------


class _NoRemote(dict[str, Any]):
    """fastjsonschema handlers for every URI scheme: none fetches anything."""

    def __contains__(self, scheme: object) -> bool:
        return True

    def __getitem__(self, scheme: str) -> Any:
        def refuse(uri: str) -> Any:
            raise fastjsonschema.JsonSchemaDefinitionException(f"remote reference {uri}")

        return refuse


def _walk(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def schema_problems(schema: Any, path: tuple[Any, ...]) -> Problems:
    """Why `schema` cannot be used, as (path, message): not a valid JSON Schema, a reference
    outside itself, or a construct the validators cannot compile."""
    cls = validator_for(schema, default=Draft7Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        return [((*path, *e.path), f"invalid JSON Schema: {e.message}")]
    for where, node in _walk(schema, ()):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return [((*path, *where, "$ref"), f"only references inside the schema (#...) are "
                         f"supported, got {ref!r}")]  # fmt: skip
    try:
        SchemaValidator(schema)
    except Exception as e:  # any compile failure is the user's schema's
        return [(path, f"cannot compile this schema: {e}")]
    return []


class SchemaValidator:
    """One user schema, compiled: `check(instance)` is None when valid, else APISIX's message."""

    __slots__ = ("_detailed", "_fast")

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = validator_for(schema, default=Draft7Validator)
        self._detailed = cls(schema)
        dialect = schema.get("$schema")
        self._fast: Any = None
        if dialect is None or any(d in str(dialect) for d in _FAST_DRAFTS):
            fast_schema = schema if dialect is not None else {**schema, "$schema": _DRAFT7}
            self._fast = fastjsonschema.compile(
                fast_schema, handlers=_NoRemote(), use_default=False, use_formats=False
            )

    def check(self, instance: Any) -> str | None:
        fast_error: str | None = None
        if self._fast is not None:
            try:
                self._fast(instance)
                return None
            except fastjsonschema.JsonSchemaValueException as e:
                fast_error = str(e.message)
            except RecursionError:
                return "the value is nested too deeply"
            except Exception:  # let the reference validator decide
                fast_error = None
        try:
            errors = list(self._detailed.iter_errors(instance))
        except RecursionError:
            return "the value is nested too deeply"
        if not errors:
            return fast_error  # the two validators disagree: keep the refusal
        return lua_message(_first(errors))


# --- APISIX's wording (api7/jsonschema, the validator APISIX runs) ------------------------------

# The order in which api7/jsonschema checks keywords at one level: its first failure wins.
_RANK = {
    "type": 0,
    "properties": 1,
    "required": 1,
    "dependencies": 2,
    "dependentRequired": 2,
    "dependentSchemas": 2,
    "patternProperties": 3,
    "additionalProperties": 3,
    "minProperties": 4,
    "maxProperties": 4,
    "minItems": 5,
    "maxItems": 5,
    "items": 6,
    "prefixItems": 6,
    "additionalItems": 7,
    "uniqueItems": 8,
    "minLength": 9,
    "maxLength": 10,
    "pattern": 11,
    "minimum": 12,
    "exclusiveMinimum": 12,
    "maximum": 12,
    "exclusiveMaximum": 12,
    "multipleOf": 13,
    "enum": 14,
    "allOf": 15,
    "anyOf": 16,
    "oneOf": 17,
    "not": 18,
    "const": 19,
    "contains": 20,
}


def _first(errors: list[ValidationError]) -> ValidationError:
    def key(item: tuple[int, ValidationError]) -> tuple[tuple[int, ...], int]:
        i, e = item
        ranks = tuple(k if isinstance(k, int) else _RANK.get(k, 21) for k in e.schema_path)
        return ranks, i

    return min(enumerate(errors), key=key)[1]


def lua_q(text: str) -> str:
    """Lua's string.format("%q", text)."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\\n")
    return '"' + out.replace("\r", "\\r").replace("\0", "\\0") + '"'


def lua_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "userdata"  # cjson.null
    return "table"


# Failures worded from the instance and the keyword's value alone.
_WORDING: dict[str, Callable[[Any, Any], str]] = {
    "minProperties": lambda _, vv: f"expect object to have at least {vv} properties",
    "maxProperties": lambda _, vv: f"expect object to have at most {vv} properties",
    "minItems": lambda _, vv: f"expect array to have at least {vv} items",
    "maxItems": lambda _, vv: f"expect array to have at most {vv} items",
    "minLength": lambda i, vv: f"string too short, expected at least {vv}, got {len(i)}",
    "maxLength": lambda i, vv: f"string too long, expected at most {vv}, got {len(i)}",
    "pattern": lambda i, vv: f"failed to match pattern {lua_q(vv)} with {lua_q(str(i))}",
    "minimum": lambda i, vv: f"expected {lua_tostring(i)} to be at least {lua_tostring(vv)}",
    "maximum": lambda i, vv: f"expected {lua_tostring(i)} to be at most {lua_tostring(vv)}",
    "exclusiveMinimum": lambda i, vv: (
        f"expected {lua_tostring(i)} to be greater than {lua_tostring(vv)}"
    ),
    "exclusiveMaximum": lambda i, vv: (
        f"expected {lua_tostring(i)} to be smaller than {lua_tostring(vv)}"
    ),
    "multipleOf": lambda i, vv: (
        f"expected {lua_tostring(i)} to be a multiple of {lua_tostring(vv)}"
    ),
    "enum": lambda _, __: "matches none of the enum values",
    "const": lambda _, __: "failed to check const value",
    "not": lambda _, __: "value wasn't supposed to match schema",
}


def _leaf(e: ValidationError) -> str:
    v, inst, vv = e.validator, e.instance, e.validator_value
    if v in ("minimum", "maximum") and e.schema.get(f"exclusive{v.capitalize()}") is True:
        v = f"exclusive{v.capitalize()}"  # draft 4: a boolean beside minimum / maximum
    wording = _WORDING.get(v) if isinstance(v, str) else None
    if wording is not None:
        return wording(inst, vv)
    if v == "type":
        if isinstance(vv, list):
            return f"wrong type: expected one of {', '.join(vv)}, got {lua_type(inst)}"
        return f"wrong type: expected {vv}, got {lua_type(inst)}"
    if v == "required":
        missing = next((k for k in vv if isinstance(inst, dict) and k not in inst), "?")
        return f"property {lua_q(str(missing))} is required"
    if v in ("dependencies", "dependentRequired") and isinstance(inst, dict):
        for prop, deps in vv.items():
            if prop in inst and isinstance(deps, list):
                for dep in deps:
                    if dep not in inst:
                        return f"property {lua_q(dep)} is required when {lua_q(prop)} is set"
    if v == "additionalProperties" and isinstance(inst, dict):
        props = e.schema.get("properties") or {}
        patterns = e.schema.get("patternProperties") or {}
        for k in inst:
            if k not in props and not any(re.search(p, k) for p in patterns):
                return f"additional properties forbidden, found {k}"
    if v == "uniqueItems" and isinstance(inst, list):
        for j in range(len(inst)):
            for i in range(j):
                if inst[i] == inst[j] and isinstance(inst[i], bool) == isinstance(inst[j], bool):
                    return f"expected unique items but items {i + 1} and {j + 1} are equal"
    if v == "anyOf":
        required = [
            json.dumps(s["required"], separators=(",", ":"))
            for s in vv
            if isinstance(s, dict) and isinstance(s.get("required"), list)
        ]
        return "object matches none of the required" + (
            ": " + " or ".join(required) if required else ""
        )
    if v == "oneOf":
        failed = {c.schema_path[0] for c in e.context or () if c.schema_path}
        matched = [i + 1 for i in range(len(vv)) if i not in failed]
        if len(matched) >= 2:
            return (
                "value should match only one schema, but matches both schemas "
                f"{matched[0]} and {matched[1]}"
            )
        return "value should match only one schema, but matches none"
    if v in (None, False, "false"):
        return "expect false always"
    return e.message


def lua_message(e: ValidationError) -> str:
    """A jsonschema error worded as api7/jsonschema words it: one prefix per level descended
    (`property "a" validation failed: `, `failed to validate item 2: `), then the failure."""
    sp = list(e.relative_schema_path)
    ip: deque[Any] = deque(e.relative_path)
    prefix: list[str] = []
    i = 0
    while i < len(sp) - 1:
        kw = sp[i]
        if kw == "properties":
            prefix.append(f"property {lua_q(str(sp[i + 1]))} validation failed: ")
            if ip:
                ip.popleft()
            i += 2
        elif kw == "patternProperties":
            key = ip.popleft() if ip else "?"
            prefix.append(f"failed to validate {key} (matching {lua_q(str(sp[i + 1]))}): ")
            i += 2
        elif kw == "additionalProperties":
            key = ip.popleft() if ip else "?"
            prefix.append(f"failed to validate additional property {key}: ")
            i += 1
        elif kw in ("items", "prefixItems"):
            index = ip.popleft() if ip else 0
            prefix.append(f"failed to validate item {index + 1}: ")
            i += 2 if i + 2 < len(sp) and isinstance(sp[i + 1], int) else 1
        elif kw == "additionalItems":
            index = ip.popleft() if ip else 0
            prefix.append(f"failed to validate additional item {index + 1}: ")
            i += 1
        elif kw == "allOf":
            prefix.append(f"allOf {sp[i + 1] + 1} failed: ")
            i += 2
        elif kw in ("dependencies", "dependentSchemas"):
            prefix.append(f"failed to validate dependent schema for {lua_q(str(sp[i + 1]))}: ")
            i += 2
        else:
            i += 1
    return "".join(prefix) + _leaf(e)


# --- reading the request ------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate object key {lua_q(k)}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise _Refused(f"invalid number {name}")


def decode_json(body: bytes) -> tuple[Any, str | None]:
    """The body as JSON, or (None, why not) in cjson's words where they exist."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 byte at character {e.start + 1}"
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant), None
    except _Refused as e:
        return None, str(e)
    except json.JSONDecodeError as e:
        where = f"at character {e.pos + 1}"
        found = "T_END" if e.pos >= len(text) else "invalid token"
        if e.msg.startswith("Expecting value"):
            return None, f"Expected value but found {found} {where}"
        if e.msg.startswith("Expecting property name"):
            return None, f"Expected object key string but found {found} {where}"
        if e.msg.startswith("Extra data"):
            return None, f"Expected the end but found {found} {where}"
        return None, f"{e.msg} {where}"
    except RecursionError:
        return None, "Found too many nested data structures"


def decode_form(body: bytes) -> dict[str, Any]:
    """ngx.decode_args(body, 0): `+` is a space, a name without `=` is true, a repeated name
    is a list of its values."""
    out: dict[str, Any] = {}
    for part in body.split(b"&"):
        if not part:
            continue
        raw_key, eq, raw_value = part.partition(b"=")
        key = unquote_to_bytes(raw_key.replace(b"+", b" ")).decode("utf-8", "replace")
        if not key:
            continue
        value: Any = (
            unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8", "replace")
            if eq
            else True
        )
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def header_object(ctx: RequestContext) -> dict[str, Any]:
    """ngx.req.get_headers(): lower-case names, a list of values for a repeated header."""
    out: dict[str, Any] = {}
    for name, value in ctx.headers:
        key = name.lower()
        prev = out.get(key)
        if prev is None:
            out[key] = value
        elif isinstance(prev, list):
            prev.append(value)
        else:
            out[key] = [prev, value]
    return out


class RequestValidation(Plugin):
    name = "request-validation"
    priority = 2800
    type = "validation"

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.code: int = conf["rejected_code"]
        self.msg: str | None = conf.get("rejected_msg")
        header_schema = conf.get("header_schema")
        body_schema = conf.get("body_schema")
        self.headers = SchemaValidator(header_schema) if header_schema is not None else None
        self.body = SchemaValidator(body_schema) if body_schema is not None else None

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems: Problems = []
        for key in ("header_schema", "body_schema"):
            schema = conf.get(key)
            if isinstance(schema, dict):
                problems += schema_problems(schema, (key,))
        return problems

    def _reject(self, why: str | None) -> Response:
        if self.msg is None and why is None:
            # APISIX's `return conf.rejected_code, conf.rejected_msg` with neither a message nor
            # a reason (no body to validate) is a bare ngx.exit: nginx's page for the status.
            return nginx_page(self.code)
        return Response(self.code, self.msg if self.msg is not None else why)

    def rewrite(self, ctx: RequestContext) -> Response | Awaitable[Response | None] | None:
        if self.headers is not None:
            why = self.headers.check(header_object(ctx))
            if why is not None:
                return self._reject(why)
        if self.body is None:
            return None
        if not ctx.has_body:
            return self._reject(None)  # APISIX: no body to validate
        if len(ctx.header_values("content-type")) > 1:
            return self._reject("duplicated Content-Type header")
        return self._check_body(ctx)

    async def _check_body(self, ctx: RequestContext) -> Response | None:
        body = await ctx.read_body()
        if not body:
            return self._reject(None)
        assert self.body is not None
        content_type = ctx.header("content-type")
        if content_type is not None and _media(content_type) == _FORM:
            data: Any = decode_form(body)
        else:
            data, why = decode_json(body)
            if why is not None:
                return self._reject(why)
        why = self.body.check(data)
        return self._reject(why) if why is not None else None


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()
