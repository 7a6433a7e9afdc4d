# What an app sees of a request made with aiohttp, reduced to plain data. The differential tests
# (tests/test_differential.py) run one snippet on CPython's aiohttp and on ours, and compare these records.
# Runs on both interpreters: nothing here may be CPython- or MicroPython-only.
import asyncio

import aiohttp

from testlib import result, sha256

# aiohttp's exception classes an app may catch, most general first; a name one side lacks is simply not listed
ERRORS = ("ClientError", "ClientConnectionError", "ClientOSError", "ClientConnectorError", "ClientConnectorDNSError",
          "ServerConnectionError", "ServerDisconnectedError", "ServerTimeoutError", "ConnectionTimeoutError",
          "SocketTimeoutError", "ClientPayloadError", "ClientResponseError", "ContentTypeError", "TooManyRedirects",
          "RedirectClientError", "InvalidURL", "InvalidUrlClientError", "NonHttpUrlClientError",
          "InvalidUrlRedirectClientError", "NonHttpUrlRedirectClientError", "WSServerHandshakeError",
          "WSMessageTypeError", "WebSocketError", "ClientConnectionResetError")
BUILTINS = (("ValueError", ValueError), ("TypeError", TypeError), ("OSError", OSError),
            ("TimeoutError", asyncio.TimeoutError), ("EOFError", EOFError), ("RuntimeError", RuntimeError))


def failure(e):
    # an exception as an app's except clauses see it: its class, what it is an instance of, what it carries
    out = {"error": type(e).__name__,
           "kinds": [name for name in ERRORS if isinstance(e, getattr(aiohttp, name, ()))]
           + [name for name, cls in BUILTINS if isinstance(e, cls)]}
    if isinstance(e, aiohttp.ClientResponseError):
        out["status"] = e.status
        out["message"] = e.message
    return out


def headers_of(headers, skip=("date", "server")):
    # every field in order, as items() gives them (the servers' clock and name left out)
    return [[name, value] for name, value in headers.items() if name.lower() not in skip]


async def answer(resp, body=True):
    # a response as the client exposes it; body: also read(), text() and json() of it
    rec = {"status": resp.status, "reason": resp.reason, "ok": resp.ok, "url": str(resp.url),
           "real_url": str(resp.real_url), "history": [[hop.status, str(hop.url)] for hop in resp.history],
           "content_type": resp.content_type, "charset": resp.charset, "content_length": resp.content_length,
           "headers": headers_of(resp.headers)}
    if not body:
        return rec
    data = await resp.read()
    rec["body"] = [len(data), sha256(data)]
    try:
        rec["text"] = await resp.text()
    except Exception as e:
        rec["text"] = failure(e)
    try:
        rec["json"] = await resp.json()
    except Exception as e:
        rec["json"] = failure(e)
    return rec


def request_kwargs(spec):
    # a case's keyword arguments, from JSON-able values: {"auth": [login, password]} is aiohttp.BasicAuth,
    # {"timeout": {...}} an aiohttp.ClientTimeout, {"data_bytes": str} bytes of its UTF-8
    kw = dict(spec)
    if "auth" in kw:
        kw["auth"] = aiohttp.BasicAuth(*kw["auth"])
    if "timeout" in kw:
        kw["timeout"] = aiohttp.ClientTimeout(**kw["timeout"])
    if "data_bytes" in kw:
        kw["data"] = kw.pop("data_bytes").encode()
    if isinstance(kw.get("params"), list):
        kw["params"] = [tuple(pair) for pair in kw["params"]]
    if isinstance(kw.get("headers"), list):
        kw["headers"] = [tuple(pair) for pair in kw["headers"]]
    return kw


async def outcome(session, method, url, body=True, **kw):
    # -> the answer to one request, or how it failed (the body read inside `async with`, as apps do)
    try:
        async with session.request(method, url, **request_kwargs(kw)) as resp:
            return await answer(resp, body)
    except Exception as e:
        return failure(e)


async def each_case(cases):
    # CASES: [{"method", "url", "session": {...}, "body": bool, "kw": {...}}], each in a session of its own: one
    # result(case=i, **record) line per case
    for i, case in enumerate(cases):
        async with aiohttp.ClientSession(**request_kwargs(case.get("session", {}))) as session:
            rec = await outcome(session, case.get("method", "GET"), case["url"], case.get("body", True),
                                **case.get("kw", {}))
        result(case=i, **rec)


def message(msg):
    # a websocket message: its type (by WSMsgType name and value), its data (bytes as their length and sha256)
    data = msg.data
    if isinstance(data, (bytes, bytearray)):
        data = ["bytes", len(data), sha256(bytes(data))]
    elif data is not None and not isinstance(data, (str, int)):
        data = failure(data) if isinstance(data, BaseException) else repr(data)
    return {"type": int(msg.type), "data": data, "extra": msg.extra}


def ws_state(ws):
    return {"closed": ws.closed, "close_code": ws.close_code,
            "exception": None if ws.exception() is None else failure(ws.exception())}
