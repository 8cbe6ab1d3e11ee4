"""Routing cost among 10 routes vs 10,000 (microseconds per match), for `make bench`.

The router must be a tree walk, not a scan: the two columns should be about equal.
"""

from __future__ import annotations

import timeit

from ando.router.router import RouteEntry, Router


def build(n: int) -> Router:
    entries = []
    for i in range(n):
        entries.append(RouteEntry(payload=i, route_id=f"e{i}", uris=(f"/exact/{i}",), order=3 * i))
        entries.append(
            RouteEntry(payload=i, route_id=f"p{i}", uris=(f"/prefix/{i}/*",), order=3 * i + 1)
        )
        entries.append(
            RouteEntry(payload=i, route_id=f"u{i}", uris=(f"/user/{i}/:id",), order=3 * i + 2)
        )
    return Router(entries)


def per_match(router: Router, path: str, number: int = 200_000) -> float:
    def lookup(_: str) -> None:
        return None

    t = min(
        timeit.repeat(
            lambda: router.match("GET", "example.com", path, "127.0.0.1", lookup),
            number=number,
            repeat=5,
        )
    )
    return t / number * 1e6


def main() -> None:
    small, large = build(4), build(3334)  # about 10 and 10,000 routes
    print("| path | 10 routes | 10,000 routes |")
    print("|---|---:|---:|")
    for label, path in (
        ("exact", "/exact/3"),
        ("prefix", "/prefix/3/a/b"),
        ("param", "/user/3/42"),
        ("miss (404)", "/nothing/here"),
    ):
        few, many = per_match(small, path), per_match(large, path)
        print(f"| {label} `{path}` | {few:.2f} µs | {many:.2f} µs |")


if __name__ == "__main__":
    main()
