"""mocking: answer in the upstream's place with a fixed or schema-generated response.

APISIX's mocking (priority 10900, access phase): `response_example` is sent as it is (with
`$var` interpolation); otherwise a value is generated from `response_schema` and encoded as JSON
for application/json and text/plain, as XML (root element `data`) for application/xml and
text/xml, and not at all for text/html (APISIX sends an empty body there). `content_type`,
`response_status` and `response_headers` shape the response, `delay` (whole seconds) waits before
it. The route needs no upstream: the request never reaches one.

With `with_mock_header` (default true) APISIX adds `x-mock-by: APISIX/<version>`. The header says
which product made the response, so Ando sends `x-mock-by: Ando/<version>`: same name and
`product/version` shape (clients that only test for the header, or split it on "/", keep
working), without claiming to be APISIX.

Generated values go beyond APISIX's generator (which only reads `example`) so that they validate
against the schema: `const`, `enum`, `example`, then `default` are used when they fit the type;
otherwise strings respect minLength/maxLength, numbers minimum/maximum (exclusive too) and
multipleOf, arrays minItems/maxItems, objects generate every property plus any `required` one.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import string
from collections.abc import Awaitable
from typing import Any
from xml.sax.saxutils import escape

import orjson

from ando import __version__
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext
from ando.plugins.transform.fault_injection import check_headers
from ando.plugins.vartemplate import VarTemplate, lua_tostring, resolve_var

MOCK_BY = f"Ando/{__version__}"
SUPPORTED_TYPES = frozenset(
    {"application/xml", "application/json", "text/plain", "text/html", "text/xml"}
)
_CONTENT_TYPE = re.compile(r"([ -~]*);([ -~]*)")
_MAX_DEPTH = 32
# A schema demanding more (minLength: 1e9) gets less rather than a gateway out of memory.
_MAX_SIZE = 65536
_MAX_ITEMS = 1000
_XML_NAME = re.compile(r"[A-Za-z_][\w.-]*", re.ASCII)


def media_type(content_type: str) -> str:
    """APISIX's parse_content_type: the part before the last ";" (no trimming, no case
    folding), so "application/json;charset=utf8" is "application/json"."""
    m = _CONTENT_TYPE.search(content_type)
    return m.group(1) if m else content_type


# --- generating a value from a JSON schema -------------------------------------------------------


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return [t.lower()]
    if isinstance(t, list):
        return [x.lower() for x in t if isinstance(x, str)]
    return []


def _fits(value: Any, types: list[str]) -> bool:
    if not types:
        return True
    for t in types:
        if t == "string" and isinstance(value, str):
            return True
        if t == "boolean" and isinstance(value, bool):
            return True
        if isinstance(value, bool):
            continue
        if t == "integer" and isinstance(value, (int, float)):
            return True  # APISIX floors a numeric example for an integer
        if t == "number" and isinstance(value, (int, float)):
            return True
        if t == "object" and isinstance(value, dict):
            return True
        if t == "array" and isinstance(value, list):
            return True
        if t == "null" and value is None:
            return True
    return False


def _given(value: Any, types: list[str]) -> Any:
    if "integer" in types and "number" not in types and isinstance(value, float):
        return math.floor(value) if math.isfinite(value) else value
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


def _bounds(schema: dict[str, Any], integer: bool) -> tuple[float, float]:
    low, high = 1.0 if integer else 0.0, 10000.0
    lo = _finite(schema.get("minimum"))
    hi = _finite(schema.get("maximum"))
    xlo = _finite(schema.get("exclusiveMinimum"))
    xhi = _finite(schema.get("exclusiveMaximum"))
    step = 1 if integer else 1e-6
    if lo is not None:
        low = lo
    if xlo is not None:
        low = max(low, xlo + step) if lo is not None else xlo + step
    if hi is not None:
        high = hi
    if xhi is not None:
        high = min(high, xhi - step) if hi is not None else xhi - step
    if high < low:
        if lo is None and xlo is None:
            low = high - 10000
        else:
            high = low + 10000
    return low, high


def _gen_number(schema: dict[str, Any], integer: bool) -> int | float:
    low, high = _bounds(schema, integer)
    multiple = _finite(schema.get("multipleOf"))
    if multiple is not None and multiple > 0:
        first = math.ceil(low / multiple)
        last = math.floor(high / multiple)
        k = random.randint(first, max(first, last))
        value = k * multiple
        return int(value) if integer or float(value).is_integer() else value
    if integer:
        return random.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    return random.uniform(low, high)


def _gen_string(schema: dict[str, Any]) -> str:
    low = schema.get("minLength", 1)
    high = schema.get("maxLength", max(10, low))
    low = low if isinstance(low, int) and low >= 0 else 1
    high = high if isinstance(high, int) and high >= low else max(10, low)
    n = min(random.randint(low, min(high, max(low, 10))), _MAX_SIZE)
    return "".join(random.choices(string.ascii_lowercase, k=n))


def _gen_array(schema: dict[str, Any], depth: int) -> list[Any]:
    items = schema.get("items")
    low = schema.get("minItems", 1)
    low = low if isinstance(low, int) and low >= 0 else 1
    high = schema.get("maxItems", max(3, low))
    high = high if isinstance(high, int) and high >= low else max(3, low)
    n = min(random.randint(low, min(high, max(low, 3))), _MAX_ITEMS)
    if isinstance(items, list):  # a tuple of schemas (draft 4 to 7)
        return [generate(s, depth + 1) for s in items[: max(n, len(items))]]
    if not isinstance(items, dict):
        return []
    out = [generate(items, depth + 1) for _ in range(n)]
    if schema.get("uniqueItems") is True:
        unique: list[Any] = []
        for v in out:
            if v not in unique:
                unique.append(v)
        out = unique
    return out


def _gen_object(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = schema.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            out[key] = generate(sub, depth + 1)
    extra = schema.get("additionalProperties")
    for key in schema.get("required") or ():
        if isinstance(key, str) and key not in out:
            out[key] = generate(extra, depth + 1) if isinstance(extra, dict) else _gen_string({})
    return out


def generate(schema: Any, depth: int = 0) -> Any:
    """A random value that validates against `schema` (for the usual keywords)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    types = _types(schema)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return random.choice(enum)
    for key in ("example", "default"):
        if key in schema and _fits(schema[key], types):
            return _given(schema[key], types)
    if not types:
        if "properties" in schema or "required" in schema:
            types = ["object"]
        elif "items" in schema:
            types = ["array"]
        else:
            return None
    typ = next((t for t in types if t != "null"), types[0])
    if typ == "object":
        return _gen_object(schema, depth)
    if typ == "array":
        return _gen_array(schema, depth)
    if typ == "string":
        return _gen_string(schema)
    if typ == "integer":
        return _gen_number(schema, integer=True)
    if typ == "number":
        return _gen_number(schema, integer=False)
    if typ == "boolean":
        return random.random() < 0.5
    return None


def to_xml(value: Any, tag: str = "data", indent: int = 0) -> str:
    """xml2lua.toXml(value, "data") in spirit: an element per key, an array as repeated elements
    of its key's name; text escaped."""
    pad = "  " * indent
    name = tag if _XML_NAME.fullmatch(tag) else "item"
    if isinstance(value, dict):
        inner = [to_xml(v, k, indent + 1) for k, v in value.items()]
        if not inner:
            return f"{pad}<{name}></{name}>"
        return f"{pad}<{name}>\n" + "\n".join(inner) + f"\n{pad}</{name}>"
    if isinstance(value, list):
        return "\n".join(to_xml(v, tag, indent) for v in value)
    text = "" if value is None else lua_tostring(value)
    return f"{pad}<{name}>{escape(text)}</{name}>"


class Mocking(Plugin):
    name = "mocking"
    priority = 10900

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.delay: int = conf["delay"]
        self.status: int = conf["response_status"]
        self.content_type: str = conf["content_type"]
        example = conf.get("response_example")
        self.example = VarTemplate(example) if example is not None else None
        self.schema: dict[str, Any] | None = conf.get("response_schema")
        self.media = media_type(self.content_type)
        headers = [("Content-Type", self.content_type)]
        if conf["with_mock_header"]:
            headers.append(("x-mock-by", MOCK_BY))
        for name, value in (conf.get("response_headers") or {}).items():
            headers.append((name, lua_tostring(value)))
        self.headers = tuple(headers)
        self.no_body = self.status in (204, 304)

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems = check_headers(conf.get("response_headers"), ("response_headers",))
        content_type = conf.get("content_type")
        if isinstance(content_type, str) and media_type(content_type) not in SUPPORTED_TYPES:
            problems.append(
                (
                    ("content_type",),
                    "unsupported content type! (expected application/json, application/xml, "
                    "text/plain, text/html or text/xml, optionally followed by ;parameters)",
                )
            )
        status = conf.get("response_status")
        if isinstance(status, int) and status < 200:
            problems.append(
                (
                    ("response_status",),
                    f"{status} is an interim status: a mock must send a final one (200 or more)",
                )
            )
        return problems

    def _body(self, ctx: RequestContext) -> str:
        if self.example is not None:
            return self.example.render(ctx.var)
        value = generate(self.schema)
        if self.media in ("application/xml", "text/xml"):
            content = to_xml(value)
        elif self.media in ("application/json", "text/plain"):
            content = orjson.dumps(value).decode()
        else:
            content = ""  # APISIX: "json schema body only support xml and json content type"
        return resolve_var(content, ctx.var)

    def _respond(self, ctx: RequestContext) -> Response:
        body = None if self.no_body else self._body(ctx)
        return Response(self.status, body, self.headers)

    def access(self, ctx: RequestContext) -> Response | Awaitable[Response | None] | None:
        if self.delay > 0:
            return self._delayed(ctx)
        return self._respond(ctx)

    async def _delayed(self, ctx: RequestContext) -> Response | None:
        await asyncio.sleep(self.delay)
        return self._respond(ctx)
