"""Our aiohttp beside CPython's aiohttp 3.14: the same call against the same server answers the same.

Each case runs once on CPython's aiohttp and once on ours (MicroPython) through tools/differential.py, and each
side is reduced to what an app sees (tests/mpy/aiodiff.py): status, reason, headers, URLs, history, content type,
the body's sha256, text() and json(), or the exception's class and the aiohttp classes it is an instance of; and,
from the FaultServer's log, what the server received. Where the two differ on purpose (docs/decisions.md, "Where
the client differs from CPython's aiohttp"), as_designed() says so, once, before the records are compared.
"""
import pytest

from tools.testservers import ScriptServer

EACH_CASE = """
from aiodiff import each_case
run(each_case(CASES))
"""

# Python's exception classes MicroPython has no subclass for: the same error there
_SAME_ERROR = {"UnicodeDecodeError": "UnicodeError", "JSONDecodeError": "ValueError"}


def as_designed(value):
    """A record with the differences docs/decisions.md states taken out: header names as ours keeps them (lower
    case), and an exception's builtin base besides its aiohttp one (MicroPython allows one built-in base: aiohttp's
    ClientOSError is an OSError, ours a ClientError only)."""
    if isinstance(value, list):
        return [as_designed(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if key == "headers":
            v = [[name.lower(), field] for name, field in v]
        elif key == "error":
            v = _SAME_ERROR.get(v, v)
        elif key == "kinds" and "ClientError" in v:
            v = [kind for kind in v if kind not in ("OSError", "TimeoutError")]
        out[key] = as_designed(v)
    if out.get("error") == "TooManyRedirects":  # ours names the last redirect's status and why; aiohttp 0 and ""
        del out["status"], out["message"]
    return out


def received_as_designed(requests):
    # each request's fields in name order: ours sends them in its own order (a MicroPython dict keeps none), which
    # RFC 9110 gives no meaning between fields of different names
    return [[method, target, sorted(fields), body] for method, target, fields, body in requests]


def same_answers(both, cases, server=None):
    theirs, ours = both.run(EACH_CASE, server=server, CASES=cases)
    if server is not None:
        assert received_as_designed(ours.pop()["received"]) == received_as_designed(theirs.pop()["received"])
    assert as_designed(ours) == as_designed(theirs)
    return ours


# ---------------------------------------------------------------- what a request sends

SENT = {
    "params as a dict": {"url": "/status/200", "kw": {"params": {"q": "a b", "page": 2}}},
    "params as pairs, after a query": {"url": "/status/200?z=0", "kw": {"params": [["tag", "x"], ["tag", "y"]]}},
    "params as a string": {"url": "/status/200", "kw": {"params": "a=1&b=2"}},
    "headers as a dict": {"url": "/status/200", "kw": {"headers": {"X-Api-Key": "k", "accept-language": "fr"}}},
    "headers as pairs": {"url": "/status/200", "kw": {"headers": [["X-A", "1"], ["X-B", "2"]]}},
    "session headers under the request's": {"url": "/status/200",
                                           "session": {"headers": {"X-A": "session", "X-B": "b"}},
                                           "kw": {"headers": {"X-A": "request"}}},
    "basic auth": {"url": "/status/200", "kw": {"auth": ["user", "pass:word"]}},
    "POST bytes": {"method": "POST", "url": "/status/200", "kw": {"data_bytes": "raw"}},
    "POST str": {"method": "POST", "url": "/status/200", "kw": {"data": "h\u00e9llo"}},
    "POST a form": {"method": "POST", "url": "/status/200", "kw": {"data": {"name": "a b", "sym": "&="}}},
    "POST json": {"method": "POST", "url": "/status/200", "kw": {"json": {"ids": [1, 2]}}},
    "PUT json with its own Content-Type": {"method": "PUT", "url": "/status/200",
                                           "kw": {"json": [1], "headers": {"Content-Type": "text/x-json"}}},
    "HEAD": {"method": "HEAD", "url": "/status/200"},
    "DELETE": {"method": "DELETE", "url": "/status/200"},
}


@pytest.mark.parametrize("case", SENT.values(), ids=SENT.keys())
def test_a_request_reaches_the_server_as_aiohttp_sends_it(both, fault, case):
    same_answers(both, [dict(case, url=fault.url(case["url"]), body=False)], server=fault)


# ---------------------------------------------------------------- what an answer reads as

ANSWERS = {
    "a body with a length": "/bytes/3000",
    "a chunked body": "/bytes/3000?chunked=1&chunks=1,7,300",
    "a body that ends with the connection": "/bytes/3000?cl=0",
    "gzip": "/bytes/3000?text=1&gzip=1",
    "deflate": "/bytes/3000?text=1&deflate=1",
    "an empty body": "/bytes/0",
    "JSON": "/json/3",
    "a 404": "/status/404",
    "a 204": "/status/204",
    "a 304": "/status/304",
    "header names as the server wrote them": "/bytes/10?lower=1",
    "a body cut short": "/bytes/3000?truncate=1000",
    "a chunked body cut short": "/bytes/3000?chunked=1&nolast=1",
    "a reset mid-body": "/bytes/3000?drop=1000",
}


@pytest.mark.parametrize("path", ANSWERS.values(), ids=ANSWERS.keys())
def test_an_answer_reads_as_in_aiohttp(both, fault, path):
    same_answers(both, [{"url": fault.url(path)}])


def test_raise_for_status_raises_what_aiohttp_raises(both, fault):
    ours = same_answers(both, [{"url": fault.url("/status/404"), "kw": {"raise_for_status": True}},
                               {"url": fault.url("/status/503"), "session": {"raise_for_status": True}},
                               {"url": fault.url("/status/200"), "kw": {"raise_for_status": True}}])
    assert [r.get("error") for r in ours] == ["ClientResponseError", "ClientResponseError", None]


def h(text):
    return text.replace("\n", "\r\n").encode()


# What no FaultServer resource sends: each path's answer, byte for byte
ODD_ANSWERS = {
    "/repeated": h("HTTP/1.1 200 OK\nContent-Length: 2\nSet-Cookie: a=1\nX-Multi: one\nset-cookie: b=2\n"
                   "X-Multi: two, three\nContent-Type: text/html; charset=ISO-8859-1\n\n") + b"\xe9!",
    "/204-with-length": h("HTTP/1.1 204 No Content\nContent-Length: 5\n\n"),
    "/304-with-length": h("HTTP/1.1 304 Not Modified\nContent-Length: 5\nETag: x\n\n"),
    "/no-reason": h("HTTP/1.1 200\nContent-Length: 2\n\n") + b"ok",
    "/http10": h("HTTP/1.0 200 OK\n\n") + b"all of it",
    "/json-suffix": h("HTTP/1.1 200 OK\nContent-Type: application/vnd.api+json\nContent-Length: 8\n\n") + b'{"a": 1}',
    "/html": h("HTTP/1.1 200 OK\nContent-Type: text/html\nContent-Length: 6\n\n") + b"<html>",
    "/json-that-is-html": h("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 6\n\n") + b"<html>",
    "/content-type-params": h('HTTP/1.1 200 OK\nContent-Type: Text/HTML ; Charset="UTF-8"; q=1\nContent-Length: 2'
                              '\n\n') + b"ok",
    "/blank-values": h("HTTP/1.1 200 OK\nX-Sp:   padded value  \nX-Empty:\nContent-Length: 0\n\n"),
    "/404-json": h("HTTP/1.1 404 Not Found\nContent-Type: application/json\nContent-Length: 11\n\n") + b'{"e": "no"}',
    "/redirect-with-a-body": h("HTTP/1.1 302 Found\nLocation: /repeated\nContent-Length: 3\n\n") + b"abc",
}


@pytest.fixture(scope="module")
def odd():
    with ScriptServer({path: [step] if step == "close" else [step, "close"]
                       for path, step in ODD_ANSWERS.items()}) as srv:
        yield srv


@pytest.mark.parametrize("path", ODD_ANSWERS, ids=[p.strip("/") for p in ODD_ANSWERS])
def test_an_unusual_answer_reads_as_in_aiohttp(both, odd, path):
    same_answers(both, [{"url": odd.url(path)}])


# ---------------------------------------------------------------- redirects

REDIRECTS = {
    "%d %s" % (code, method): {"method": method, "url": "/redirect?code=%d&to=/status/200" % code,
                               "kw": {"data_bytes": "abc"} if method in ("POST", "PUT") else {}}
    for code in (301, 302, 303, 307, 308) for method in ("GET", "POST", "PUT")
}
REDIRECTS.update({
    "a chain of relative Locations": {"url": "/chain/3/status/200"},
    "a chain of absolute Locations": {"url": "/chain/3/status/200?abs=1"},
    "allow_redirects=False": {"url": "/chain/3/status/200", "kw": {"allow_redirects": False}},
    "a Location relative to the path": {"url": "/redirect?to=status/200"},
    "a Location with dot segments": {"url": "/redirect?to=../status/200?x=1"},
    "a HEAD followed": {"method": "HEAD", "url": "/redirect?to=/status/200", "kw": {"allow_redirects": True}},
    "auth kept on the same origin": {"url": "/redirect?to=/status/200", "kw": {"auth": ["u", "p"]}},
})


@pytest.mark.parametrize("case", REDIRECTS.values(), ids=REDIRECTS.keys())
def test_a_redirect_is_followed_as_in_aiohttp(both, fault, case):
    case = dict(case, url=fault.url(case["url"]), body=False)
    ours = same_answers(both, [case], server=fault)
    if "error" not in ours[0]:
        assert ours[0]["history"] or case.get("kw", {}).get("allow_redirects") is False


# ---------------------------------------------------------------- failures

FAILURES = {
    "a redirect loop": {"url": "/loop"},
    "more than max_redirects": {"url": "/chain/3/status/200", "kw": {"max_redirects": 2}},
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_raises_what_aiohttp_raises(both, fault, case):
    ours = same_answers(both, [dict(case, url=fault.url(case["url"]))])
    assert ours[0]["error"]


def test_a_connection_failure_is_caught_by_aiohttp_s_names(both, fault):
    with ScriptServer({"/": ["close"]}) as srv:  # it closes before answering, then is gone
        same_answers(both, [{"url": srv.url("/")}])
        port = srv.port
    same_answers(both, [{"url": "http://127.0.0.1:%d/" % port},
                        {"url": fault.url("/bytes/3000?stall=1000&stall_s=3"), "kw": {"timeout": {"sock_read": 0.3}}}])


# ---------------------------------------------------------------- websockets

WEBSOCKET = """
import aiohttp
from aiodiff import failure, message, ws_state

async def step(name, aw):
    try:
        got = await aw
    except Exception as e:
        result(step=name, failure=failure(e))
        return
    if isinstance(got, aiohttp.WSMessage):
        result(step=name, message=message(got))
    else:
        result(step=name, value=got if got is None or isinstance(got, (bool, str, dict)) else type(got).__name__)

async def main():
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(BASE + "/echo")
        result(step="open", state=ws_state(ws), protocol=ws.protocol)
        await ws.send_str("hello")
        await step("a text message", ws.receive())
        await ws.send_bytes(b"\\x00\\x01")
        await step("a binary message", ws.receive())
        await ws.send_json({"a": 1})
        await step("receive_json", ws.receive_json())
        await ws.send_bytes(b"xx")
        await step("receive_str of a binary message", ws.receive_str())
        await ws.send_str("yy")
        await step("receive_bytes of a text message", ws.receive_bytes())
        await ws.send_str("no json")
        await step("receive_json of no JSON", ws.receive_json())
        await step("close", ws.close())
        result(step="after our close", state=ws_state(ws))
        await step("receive after the close", ws.receive())
        await step("send after the close", ws.send_str("late"))

        ws = await session.ws_connect(BASE + "/close/4000")
        await step("the server's Close", ws.receive())
        result(step="after the server's Close", state=ws_state(ws))
        await step("receive after it", ws.receive())
        await step("close after it", ws.close())

        ws = await session.ws_connect(BASE + "/close/1001")
        seen = []
        async for msg in ws:
            seen.append(message(msg))
        result(step="async for until the server closes", seen=seen, state=ws_state(ws))

        ws = await session.ws_connect(BASE + "/drop")
        await step("a TCP close without a Close", ws.receive())
        result(step="after the drop", state=ws_state(ws))

        ws = await session.ws_connect(BASE + "/echo", protocols=("superchat", "chat"))
        result(step="the protocol chosen", protocol=ws.protocol)
        await ws.close(code=4001, message=b"done")
        result(step="closed with 4001", state=ws_state(ws))

        ws = await session.ws_connect(BASE + "/ping")
        await step("a ping answered by itself", ws.receive())
        await ws.close()

        await step("a handshake answered 404", session.ws_connect(BASE + "/status/404"))

run(main())
"""


@pytest.mark.parametrize("server", ["ws_aiohttp", "ws_websockets"])
def test_a_websocket_behaves_as_in_aiohttp(both, request, server):
    theirs, ours = both.run(WEBSOCKET, BASE=request.getfixturevalue(server).base)
    assert len(ours) == 22
    assert as_designed(ours) == as_designed(theirs)
