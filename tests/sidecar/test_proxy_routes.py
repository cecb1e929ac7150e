"""Proxy routes, pure: which host gets which credential, how it is rendered, which routes are refused."""

from __future__ import annotations

import base64

import pytest
from taskcreds.sidecar.proxy import ProxyRoute, RouteError, match_route


class View:
    def __init__(self, values: dict[tuple[str, str], str], ended: bool = False) -> None:
        self.values, self.ended = values, ended

    def value(self, credential: str, file: str = "token") -> str | None:
        return self.values.get((credential, file))


ROUTES = [
    ProxyRoute("gh-api", ("api.github.com",), header="Authorization: Bearer {token}"),
    ProxyRoute("gh-git", ("github.com", "*.githubusercontent.com"), basic_username="x-access-token"),
    ProxyRoute("corp", ("*.corp.example.com",), header="X-Api-Key: {token}"),
    ProxyRoute("corp-deep", ("*.eu.corp.example.com",), header="X-Api-Key: {token}"),
    ProxyRoute("exact-wins", ("build.corp.example.com",), header="X-Api-Key: {token}"),
]


@pytest.mark.parametrize(
    "host,credential,pattern",
    [
        ("api.github.com", "gh-api", "api.github.com"),
        ("API.GitHub.com.", "gh-api", "api.github.com"),
        ("github.com", "gh-git", "github.com"),
        ("raw.githubusercontent.com", "gh-git", "*.githubusercontent.com"),
        ("a.b.githubusercontent.com", "gh-git", "*.githubusercontent.com"),
        ("githubusercontent.com", None, None),  # a wildcard never matches the bare suffix
        ("evilgithubusercontent.com", None, None),  # suffix match only on a dot boundary
        ("api.github.com.evil.com", None, None),
        ("x.corp.example.com", "corp", "*.corp.example.com"),
        ("x.eu.corp.example.com", "corp-deep", "*.eu.corp.example.com"),  # longer suffix wins
        ("build.corp.example.com", "exact-wins", "build.corp.example.com"),  # exact beats wildcard
        ("gitlab.com", None, None),
        ("not a host", None, None),
    ],
)
def test_which_route_a_host_gets(host: str, credential: str | None, pattern: str | None) -> None:
    found = match_route(ROUTES, host)
    if credential is None:
        assert found is None
    else:
        assert found is not None and (found[0].credential, found[1]) == (credential, pattern)


@pytest.mark.parametrize(
    "route,view,expected",
    [
        pytest.param(
            ProxyRoute("c", ("h.com",), header="Authorization: Bearer {token}"),
            View({("c", "token"): "abc"}),
            "Bearer abc",
            id="bearer",
        ),
        pytest.param(
            ProxyRoute("c", ("h.com",), header="Authorization: Bearer {token}"),
            View({("c", "token"): "abc\n"}),
            "Bearer abc",
            id="trailing newline of a token file dropped",
        ),
        pytest.param(
            ProxyRoute("c", ("h.com",), basic_username="x-access-token"),
            View({("c", "token"): "abc"}),
            "Basic " + base64.b64encode(b"x-access-token:abc").decode(),
            id="basic",
        ),
        pytest.param(
            ProxyRoute("c", ("h.com",), header="X-Auth: {username}:{password} {{literal}}"),
            View({("c", "username"): "u", ("c", "password"): "p"}),
            "u:p {literal}",
            id="several files",
        ),
        pytest.param(
            ProxyRoute("c", ("h.com",), header="Authorization: Bearer {token}"),
            View({}),
            None,
            id="absent: None",
        ),
        pytest.param(
            ProxyRoute("c", ("h.com",), header="X-Auth: {username}:{password}"),
            View({("c", "username"): "u"}),
            None,
            id="one file absent: None",
        ),
    ],
)
def test_rendering_the_credential(route: ProxyRoute, view: View, expected: str | None) -> None:
    assert route.render(view) == expected


def test_a_value_that_would_split_the_header_is_refused_without_showing_it() -> None:
    route = ProxyRoute("c", ("h.com",), header="Authorization: Bearer {token}")
    with pytest.raises(RouteError, match="line break") as info:
        route.render(View({("c", "token"): "secret-part\r\nX-Injected: 1"}))
    assert "secret-part" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        pytest.param(dict(credential="c", hosts=()), "hosts is empty", id="no hosts"),
        pytest.param(dict(credential="c", hosts=("h.com",)), "exactly one of header", id="neither"),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="A: {token}", basic_username="u"),
            "exactly one of header",
            id="both",
        ),
        pytest.param(
            dict(credential="c", hosts=("*",), header="A: {token}"), "neither a DNS name", id="bare star"
        ),
        pytest.param(
            dict(credential="c", hosts=("*.com",), header="A: {token}"), "top-level domain", id="tld wildcard"
        ),
        pytest.param(
            dict(credential="c", hosts=("a.*.com",), header="A: {token}"),
            "neither a DNS name",
            id="inner wildcard",
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="Authorization Bearer {token}"),
            "must look like",
            id="no colon",
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="Authorization: Bearer"),
            "no placeholder",
            id="no placeholder",
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="A: {token!r}"), "plain file name", id="conversion"
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="A: {../x}"), "plain file name", id="path"
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="A: {token"), "malformed", id="unbalanced"
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), header="Host: {token}"),
            "managed by the proxy",
            id="host header",
        ),
        pytest.param(
            dict(credential="c", hosts=("h.com",), basic_username="a:b"), "without ':'", id="colon in user"
        ),
        pytest.param(
            dict(credential="../c", hosts=("h.com",), header="A: {token}"),
            "credential name",
            id="bad credential name",
        ),
    ],
)
def test_unusable_routes_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RouteError, match=message):
        ProxyRoute(**kwargs)  # type: ignore[arg-type]


def test_routes_are_normalized_and_hashable() -> None:
    route = ProxyRoute("c", ("API.Example.com.", "*.Example.ORG"), header="authorization: Bearer {token}")
    assert route.hosts == ("api.example.com", "*.example.org")
    assert route.header_name == "authorization" and route.files == ("token",)
    assert (
        len(
            {
                route,
                ProxyRoute("c", ("api.example.com", "*.example.org"), header="authorization: Bearer {token}"),
            }
        )
        == 1
    )
