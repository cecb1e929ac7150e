"""Proxy host matching that mutation testing found unguarded (tests/sidecar/test_proxy_routes.py covers
the common cases).

An exact host pattern matches that name only: never a longer name that merely ends with it
(``evilgithub.com`` for ``github.com``) nor a subdomain of it. Matching by suffix is reserved for
``*.`` patterns, and even then only on a dot boundary. A wrong match sends the credential to
another host.
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
