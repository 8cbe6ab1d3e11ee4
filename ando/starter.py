"""The starter config `ando init` writes: small, commented, valid, and serving at once.

It needs no backend to show something (a mocking route), and shows the three things a new user
edits first: a proxied route, an API key, and a rate limit. Kept here as text, not read from a
file, so the single-file binary carries it without a data file.
"""

from __future__ import annotations

STARTER = """\
# yaml-language-server: $schema=ando.schema.json
#   (editors with the YAML extension complete and check fields with it; `ando init` wrote it)
#
# Ando's config: node settings under `ando:`, then APISIX's resources (routes, upstreams,
# consumers, ...), written as APISIX's standalone apisix.yaml writes them.
#   check it:   ando validate ando.yaml
#   serve it:   ando run -c ando.yaml      (edits are picked up as you save)
# Values can come from the environment: ${{NAME}} or ${{NAME:=default}}.

ando:
  listen:
    - "0.0.0.0:${{ANDO_PORT:=9080}}"
  workers: auto                       # one worker per CPU core

upstreams:
  - id: backend                       # your service; nothing needs to run there for /hello
    nodes:
      "127.0.0.1:8080": 1

routes:
  # Answered by the gateway itself:  curl -i localhost:9080/hello
  - id: hello
    uri: /hello
    plugins:
      mocking:
        response_example: '{"message": "hello from Ando"}'
        content_type: application/json
        with_mock_header: false

  # Everything under /api/ goes to the backend, for clients with an API key (see consumers),
  # at most 100 requests per minute per client address:
  #   curl -i localhost:9080/api/items -H 'apikey: change-me'
  - id: api
    uri: /api/*
    upstream_id: backend
    plugins:
      key-auth: {}
      limit-count:
        count: 100
        time_window: 60
        rejected_code: 429

consumers:
  - username: first-client
    plugins:
      key-auth:
        key: ${{ANDO_API_KEY:=change-me}}
"""
