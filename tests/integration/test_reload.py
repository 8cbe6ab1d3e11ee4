"""Hot reload under load: the config is rewritten every 100 ms while requests flow; none may fail,
and the routes of the last version must be in effect."""

from __future__ import annotations

import http.client
import threading
import time

from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


def config(up: str, generation: int) -> dict:
    return {
        "routes": [
            {"id": "stable", "uri": "/stable/*", "upstream": {"nodes": {up: 1}}},
            {"id": f"gen{generation}", "uri": f"/gen{generation}", "upstream": {"nodes": {up: 1}}},
        ]
    }


def _load(port: int, stop: threading.Event, results: list[int], errors: list[str]) -> None:
    """Keep-alive requests until told to stop (bounded by count too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i in range(5000):
        if stop.is_set():
            break
        try:
            conn.request("GET", f"/stable/{i}")
            resp = conn.getresponse()
            resp.read()
            results.append(resp.status)
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 400:
            print("400 body:", body)
        return resp.status
    finally:
        conn.close()


def test_rewriting_the_config_every_100ms_under_load_fails_no_request(tmp_path):
    with UpstreamServer("a") as up:
        gw = GatewayProcess(config(up.addr, 0), tmp_path, workers=2, access_log=False)
        with gw:
            stop = threading.Event()
            results: list[int] = []
            errors: list[str] = []
            loaders = [
                threading.Thread(target=_load, args=(gw.port, stop, results, errors))
                for _ in range(4)
            ]
            for t in loaders:
                t.start()
            try:
                last = 0
                for generation in range(1, 31):  # 3 s of rewrites, one every 100 ms
                    gw.write_config(config(up.addr, generation))
                    last = generation
                    time.sleep(0.1)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and _status(gw.port, f"/gen{last}") != 200:
                    time.sleep(0.1)
                assert _status(gw.port, f"/gen{last}") == 200
                assert _status(gw.port, "/gen0") == 404  # the old version's route is gone
            finally:
                stop.set()
                for t in loaders:
                    t.join(30)
            assert errors == []
            assert len(results) > 100
            assert set(results) == {200}
            assert '"event":"reload"' in gw.stderr().replace(" ", "")


def test_a_broken_edit_keeps_the_last_good_config_serving(tmp_path):
    with UpstreamServer("a") as up:
        gw = GatewayProcess(config(up.addr, 1), tmp_path, workers=1, access_log=False)
        with gw:
            assert _status(gw.port, "/gen1") == 200
            gw.config_path.write_text("routes:\n  - uri: /gen2\n    upstream_id: missing\n")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "upstream_id" not in gw.stderr():
                time.sleep(0.05)
            stderr = gw.stderr()
            assert "ando.yaml:3:18: routes[0].upstream_id: 'missing' does not exist" in stderr
            assert _status(gw.port, "/gen1") == 200
            assert _status(gw.port, "/gen2") == 404
            gw.write_config(config(up.addr, 3))  # and a later good edit still applies
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _status(gw.port, "/gen3") != 200:
                time.sleep(0.05)
            assert _status(gw.port, "/gen3") == 200


def _lua_module(version: int) -> str:
    return f"""
return {{
    name = "version-probe",
    priority = 1,
    header_filter = function(conf, ctx) ando.response.set_header("X-Version", "{version}") end,
}}
"""


def test_editing_a_loaded_lua_module_reloads_like_editing_the_config(tmp_path):
    lua_dir = tmp_path / "lua"
    lua_dir.mkdir()
    module = lua_dir / "probe.lua"
    module.write_text(_lua_module(1))
    with UpstreamServer("up") as up:
        config = {
            "ando": {"lua": {"paths": [str(lua_dir)], "plugins": ["probe"]}},
            "routes": [
                {
                    "uri": "/v",
                    "plugins": {"version-probe": {}},
                    "upstream": {"nodes": {up.addr: 1}},
                }
            ],
        }
        with GatewayProcess(config, tmp_path) as gw:
            assert _header(gw.port, "/v", "X-Version") == "1"
            tmp = lua_dir / "probe.lua.tmp"
            tmp.write_text(_lua_module(2))
            tmp.replace(module)  # as an editor saves: no SIGHUP, the config file untouched
            deadline = time.monotonic() + 10
            while _header(gw.port, "/v", "X-Version") != "2":
                assert time.monotonic() < deadline, gw.stderr()[-2000:]
                time.sleep(0.05)
            assert '"trigger":"watch"' in gw.stderr()


def _header(port: int, path: str, name: str) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader(name)
    finally:
        conn.close()
