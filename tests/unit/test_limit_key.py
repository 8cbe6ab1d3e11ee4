"""The limit plugins' key (APISIX's key_type/key, with its fallback to the client address) and
their refusals (APISIX's error_msg body, or nginx's page for a bare status)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ando.plugins.pages import nginx_page
from ando.plugins.traffic.limit_key import LimitKey, rejection

VARS = {"remote_addr": "10.0.0.1", "http_x_api_key": "k1", "http_x_user": "u", "empty": ""}


def ctx(**extra: str) -> SimpleNamespace:
    values = {**VARS, **extra}
    return SimpleNamespace(var=values.get)


@pytest.mark.parametrize(
    ("key_type", "key", "expected"),
    [
        ("var", "remote_addr", "10.0.0.1"),
        ("var", "http_x_api_key", "k1"),
        ("var", "http_x_absent", "10.0.0.1"),  # absent: the client address
        ("var", "empty", "10.0.0.1"),  # empty: the client address
        ("constant", "everyone", "everyone"),
        ("var_combination", "$http_x_api_key $http_x_user", "k1 u"),
        ("var_combination", "${http_x_api_key}-${ http_x_user }", "k1-u"),
        ("var_combination", "$http_x_api_key:$http_x_absent", "k1:"),  # one resolved is enough
        ("var_combination", "$http_x_absent/$http_x_other", "10.0.0.1"),  # none resolved
        ("var_combination", "no variables", "10.0.0.1"),  # APISIX: nothing resolved
        ("var_combination", r"\$http_x_user $http_x_user", r"\$http_x_user u"),  # escaped
        ("var_combination", "$empty", ""),  # an empty value resolved (APISIX's n_resolved)
        ("var_combination", "${http_x_absent ?? anon}", "anon"),  # a default resolves too
    ],
)
def test_key_resolution(key_type, key, expected):
    assert LimitKey(key_type, key)(ctx()) == expected


def test_a_consumer_name_key_falls_back_until_a_consumer_is_known():
    k = LimitKey("var", "consumer_name")
    assert k(ctx()) == "10.0.0.1"
    assert k(ctx(consumer_name="jack")) == "jack"


def test_rejection_with_a_message_is_apisix_json():
    r = rejection(429, "slow down")
    assert (r.status, r.body, r.content_type) == (
        429,
        b'{"error_msg":"slow down"}\n',
        "application/json",
    )


def test_rejection_without_a_message_is_nginx_page():
    r = rejection(503, None)
    assert r.status == 503 and r.content_type == "text/html"
    assert len(r.body) == 194  # the Content-Length APISIX's docs show for this refusal
    assert b"<title>503 Service Temporarily Unavailable</title>" in r.body
    assert b"<hr><center>openresty</center>" in r.body
    assert b"429 Too Many Requests" in nginx_page(429).body
    assert nginx_page(418).body == b""  # nginx has no page for it: an empty body
    assert nginx_page(200).body == b""
