"""The compiled libraries the default config does not reach, through the binary: an HTTPS
listener (the bundled _ssl and OpenSSL, the certificate chosen by SNI) and jwt-auth with an
ES256 consumer (PyJWT on cryptography's Rust bindings). A library loaded only at first use
would pass every other e2e test and fail here."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.certs import make_cert
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


def test_https_by_sni_and_an_es256_jwt(ando_binary: Path, tmp_path: Path):
    cert, key = make_cert("edge.example.com")
    signer = ec.generate_private_key(ec.SECP256R1())
    public = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with UpstreamServer("up") as up:
        gw = GatewayProcess({}, tmp_path, command=[str(ando_binary)], cwd=tmp_path)
        gw.write_config(
            {
                "ando": {"listen": [{"addr": f"127.0.0.1:{gw.port}", "tls": True}]},
                "ssls": [{"id": "edge", "cert": cert, "key": key, "snis": ["edge.example.com"]}],
                "consumers": [
                    {
                        "username": "device",
                        "plugins": {
                            "jwt-auth": {
                                "key": "device-1",
                                "algorithm": "ES256",
                                "public_key": public.decode(),
                            }
                        },
                    }
                ],
                "routes": [
                    {
                        "uri": "/*",
                        "plugins": {"jwt-auth": {}},
                        "upstream": {"nodes": {up.addr: 1}},
                    }
                ],
            }
        )
        with gw:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            token = jwt.encode(
                {"key": "device-1", "exp": int(time.time()) + 60}, signer, algorithm="ES256"
            )
            conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=10)
            try:
                conn.putrequest("GET", "/reading", skip_host=True)
                conn.putheader("Host", "edge.example.com")
                conn.putheader("Authorization", f"Bearer {token}")
                conn.endheaders()
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200, body
                sock = conn.sock
                assert isinstance(sock, ssl.SSLSocket)
                assert sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(cert)
            finally:
                conn.close()

            seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
            assert seen.get("x-consumer-username") == "device"
