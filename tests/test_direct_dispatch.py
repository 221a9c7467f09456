"""The pipeline's POSTs skip the router (``direct_dispatch``): the same requests reach the same handlers."""

from __future__ import annotations

import socket

import pytest

from tests.support.policies import basic_policy

BODY = b'{"model":"small","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture
def gw(make_gateway, upstream):
    return make_gateway(basic_policy(upstream.url))


def raw_post(port: int, path: str, extra: str = "", method: str = "POST", body: bytes = BODY) -> bytes:
    """One request on a fresh connection; everything the gateway sends until it closes or 3 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-acme\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode()
        if "100-continue" in extra:
            sock.sendall(head)
            interim = sock.recv(4096)
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
            sock.sendall(body)
            out = interim
        else:
            sock.sendall(head + body)
            out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


def test_direct_post_is_answered_by_the_pipeline(gw) -> None:
    answer = raw_post(gw.port, "/v1/chat/completions")
    assert status_of(answer) == 200 and b"x-request-id" in answer.lower() and b'"chat.completion"' in answer


def test_expect_100_continue_still_gets_the_interim_answer(gw) -> None:
    answer = raw_post(gw.port, "/v1/chat/completions", "Expect: 100-continue\r\n")
    assert b"\r\nHTTP/1.1 200 OK\r\n" in answer and b'"chat.completion"' in answer


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/chat/completions", 405),  # the router's answers, as before
    ("POST", "/v1/chat/completions/", 404),
    ("POST", "/v1/chat/completions?x=1", 200),  # the query is not part of the path
    ("POST", "/v1/chat%2Fcompletions", 404),  # an encoded slash is not a path separator
])
def test_other_requests_go_through_the_router(gw, method: str, path: str, status: int) -> None:
    answer = raw_post(gw.port, path, method=method)
    assert status_of(answer) == status
    assert b"application/json" in answer  # the gateway's JSON errors, not aiohttp's text ones


@pytest.mark.parametrize("method,path,headers,direct", [
    ("POST", "/a", {}, True),
    ("GET", "/a", {}, False),
    ("POST", "/a", {"Expect": "100-continue"}, False),
    ("POST", "/a/", {}, False),
    ("POST", "/b", {}, False),
])
async def test_dispatch_takes_only_exact_posts_without_expect(method: str, path: str, headers: dict,
                                                              direct: bool) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from gateway.http.protocol import direct_dispatch

    seen: list[str] = []

    def answer(name: str):
        async def handle(request):
            seen.append(name)
            return web.Response()
        return handle

    dispatch = direct_dispatch({"/a": answer("direct")}, answer("app"))
    await dispatch(make_mocked_request(method, path, headers=headers))
    assert seen == ["direct" if direct else "app"]
