"""HTTPS listeners: the certificate is chosen by SNI from `ssls`, and a reload can replace it."""

from __future__ import annotations

import http.client
import socket
import ssl
import time

from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support.certs import make_cert
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


def served_cert_cn(port: int, server_name: str | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def config(tls_port: int, up: str, a: tuple[str, str], b: tuple[str, str]) -> dict:
    return {
        "ando": {"listen": [{"addr": f"127.0.0.1:{tls_port}", "tls": True}]},
        "ssls": [
            {"id": "a", "cert": a[0], "key": a[1], "snis": ["a.example.com"]},
            {"id": "b", "cert": b[0], "key": b[1], "snis": ["*.b.example.com"]},
        ],
        "routes": [{"uri": "/*", "upstream": {"nodes": {up: 1}}}],
    }


def test_certificate_by_sni_proxying_and_reload(tmp_path):
    a, b, a2 = (
        make_cert("a.example.com"),
        make_cert("x.b.example.com", "*.b.example.com"),
        make_cert("a2"),
    )
    with UpstreamServer("up") as up:
        gw = GatewayProcess({}, tmp_path, access_log=False)
        gw.write_config(config(gw.port, up.addr, a, b))
        with gw:
            assert served_cert_cn(gw.port, "a.example.com") == "a.example.com"
            assert served_cert_cn(gw.port, "x.b.example.com") == "x.b.example.com"  # wildcard
            assert (
                served_cert_cn(gw.port, "b.example.com") == "a.example.com"
            )  # not the wildcard: default
            assert (
                served_cert_cn(gw.port, None) == "a.example.com"
            )  # no SNI: the default certificate

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=5)
            conn.request("GET", "/hello", headers={"Host": "a.example.com"})
            resp = conn.getresponse()
            assert resp.status == 200
            seen = resp.read()
            assert b'"X-Forwarded-Proto", "https"' in seen
            conn.close()

            gw.write_config(config(gw.port, up.addr, a2, b))  # replace a.example.com's certificate
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and served_cert_cn(gw.port, "a.example.com") != "a2":
                time.sleep(0.1)
            assert served_cert_cn(gw.port, "a.example.com") == "a2"
