"""Proxy host matching that mutation testing found unguarded (tests/sidecar/test_proxy_routes.py covers
the common cases).

An exact host pattern matches that name only: never a longer name that merely ends with it
(``evilgithub.com`` for ``github.com``) nor a subdomain of it. Matching by suffix is reserved for
``*.`` patterns, and even then only on a dot boundary. A wrong match sends the credential to
another host.

When several routes match, the most specific wins whatever the listing order (exact name, then the
longest wildcard suffix); only equal patterns fall back to the first listed. The route tests list
their routes most-specific-last, so "the last match wins" passed them.
"""

from __future__ import annotations

import pytest
from taskcreds.sidecar.proxy import ProxyRoute, RouteError, match_route

ROUTES = [
    ProxyRoute("gh-git", ("github.com",), basic_username="x-access-token"),
    ProxyRoute("gh-api", ("api.github.com",), header="Authorization: Bearer {token}"),
    ProxyRoute("corp", ("*.corp.example.com",), header="X-Api-Key: {token}"),
]

CASES = [
    ("exact name", "github.com", "gh-git"),
    ("exact name, other case and root dot", "GitHub.com.", "gh-git"),
    ("longer name ending in the exact name", "evilgithub.com", None),
    ("longer name ending in the exact name minus its first letter", "xithub.com", None),
    ("prefix added to an exact subdomain", "xapi.github.com", None),
    ("subdomain of an exact name", "www.github.com", None),
    ("other subdomain of an exact name's parent", "uploads.github.com", None),
    ("wildcard below its suffix", "git.corp.example.com", "corp"),
    ("wildcard suffix without the dot boundary", "evilcorp.example.com", None),
    ("wildcard's bare suffix", "corp.example.com", None),
]


@pytest.mark.parametrize(("case", "host", "credential"), CASES, ids=[c[0] for c in CASES])
def test_exact_patterns_match_one_name(case: str, host: str, credential: str | None) -> None:
    found = match_route(ROUTES, host)
    assert (found[0].credential if found else None) == credential, case
    matching = [r.credential for r in ROUTES if r.matches(host.lower().rstrip("."))]
    assert matching == ([credential] if credential else []), case


@pytest.mark.parametrize("host", [123, None, b"api.example.com"], ids=["number", "null", "bytes"])
def test_a_host_that_is_not_a_string_is_refused_by_name(host: object) -> None:
    with pytest.raises(RouteError, match=r"proxy route for credential 'api': host .* is not a string"):
        ProxyRoute("api", (host,), header="Authorization: Bearer {token}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [
        "X-Api-Key: a\r\nX-Injected: 1 {token}",
        "X-Api-Key: {token}\nX-Injected: 1",
        "X-Api-Key: {token}\rX-Injected: 1",
        "X-Api-Key: {token}\0",
    ],
    ids=["CRLF", "LF", "CR", "NUL"],
)
def test_a_header_template_with_a_line_break_is_refused(header: str) -> None:
    # the template is sent verbatim around the value: a line break would inject request headers
    with pytest.raises(RouteError, match="template holds a line break"):
        ProxyRoute("api", ("api.example.com",), header=header)


PRECEDENCE_CASES = [
    (
        "exact beats a wildcard listed first",
        [("wild", "*.corp.example.com"), ("exact", "x.corp.example.com")],
        "x.corp.example.com",
        "exact",
    ),
    (
        "longer wildcard beats a shorter one listed after it",
        [("deep", "*.eu.corp.example.com"), ("shallow", "*.corp.example.com")],
        "x.eu.corp.example.com",
        "deep",
    ),
    (
        "exact beats a longer-suffix wildcard listed after it",
        [("exact", "git.eu.corp.example.com"), ("deep", "*.eu.corp.example.com")],
        "git.eu.corp.example.com",
        "exact",
    ),
    (
        "first of two equal patterns",
        [("one", "*.corp.example.com"), ("two", "*.corp.example.com")],
        "a.corp.example.com",
        "one",
    ),
    (
        "first of two equal exact names",
        [("one", "api.example.com"), ("two", "api.example.com")],
        "api.example.com",
        "one",
    ),
]


@pytest.mark.parametrize(
    ("case", "routes", "host", "credential"), PRECEDENCE_CASES, ids=[c[0] for c in PRECEDENCE_CASES]
)
def test_precedence_does_not_depend_on_listing_order(
    case: str, routes: list[tuple[str, str]], host: str, credential: str
) -> None:
    built = [ProxyRoute(name, (pattern,), header="X-Api-Key: {token}") for name, pattern in routes]
    found = match_route(built, host)
    assert found is not None and found[0].credential == credential, case


@pytest.mark.parametrize(
    "header",
    ["Bad Name: {token}", "X\r\nX-Injected: {token}", "X-Api-Key {token}", ": {token}"],
    ids=["space in the name", "line break in the name", "no colon", "empty name"],
)
def test_a_header_name_that_is_not_an_http_token_is_refused(header: str) -> None:
    with pytest.raises(RouteError, match="must look like 'Name: value with"):
        ProxyRoute("api", ("api.example.com",), header=header)
