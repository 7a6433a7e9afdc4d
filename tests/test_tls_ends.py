"""How a TLS connection's end frames an answer. MicroPython's TLS socket reads b"" both for the server's close_notify
and for a TCP FIN without one (mbedTLS maps its transport's EOF to the same 0); a body that the end of the connection
frames is whole only after a close_notify (RFC 9110 section 9.8): a FIN alone may be a truncation (an attacker's, or
a link dropped through a middlebox). A body framed by its length or by chunks is judged by its framing."""
import hashlib
import socket

import pytest

from test_http_framing import TLS_RECORDS as READS  # resp.read(), then resp.content.read(4096) to the end
from test_reliability import MODES, OLD, dl, failed
from tools.testservers import ScriptServer, payload

BODY = payload(20000)
SHA = hashlib.sha256(BODY).hexdigest()
RECORDS = [BODY[i:i + 4000] for i in range(0, len(BODY), 4000)]  # a TLS record each
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


def chunked(records):
    return [b"%x\r\n%s\r\n" % (len(r), r) for r in records]


# name -> (the script, whether the body must come whole)
ANSWERS = {
    "until-close, close_notify": ([UNTIL_CLOSE] + RECORDS + [0.05, "notify"], True),
    "until-close, FIN without close_notify": ([UNTIL_CLOSE] + RECORDS + [0.05, "close"], False),
    # (the alert right behind the last data: MicroPython's stream read takes both in one call, and the next read
    # meets the TCP end)
    "until-close, close_notify at once": ([UNTIL_CLOSE] + RECORDS + ["notify"], True),
    # (a server may keep TCP open until the client closes, as openssl s_server -WWW does: nothing may follow the
    # close_notify, so the body is whole without the FIN)
    "until-close, close_notify, no FIN before the client's": ([UNTIL_CLOSE] + RECORDS + [0.05, "notify-hold"], True),
    "until-close, close_notify at once, no FIN before the client's": ([UNTIL_CLOSE] + RECORDS + ["notify-hold"], True),
    "until-close, reset": ([UNTIL_CLOSE] + RECORDS + [0.05, "reset"], False),
    "length, whole, FIN without close_notify": ([LENGTH % len(BODY)] + RECORDS + [0.05, "close"], True),
    "length, short, close_notify": ([LENGTH % (len(BODY) + 1)] + RECORDS + [0.05, "notify"], False),
    "chunked, whole, FIN without close_notify": ([CHUNKED] + chunked(RECORDS) + [b"0\r\n\r\n", 0.05, "close"], True),
    "chunked, cut, close_notify": ([CHUNKED] + chunked(RECORDS) + [0.05, "notify"], False),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_tls_answer_is_whole_only_as_its_framing_or_a_close_notify_says(mpy, certs, answer):
    script, whole = ANSWERS[answer]
    with ScriptServer({"/r": script}, certs=certs) as srv:
        r = mpy.run(READS, URL=srv.url("/r"))
    assert_read(r.results, whole)


def assert_read(results, whole):
    # each way of reading got the body whole, or a ClientPayloadError
    for got in results:
        if whole:
            assert got.get("sha") == SHA, got
        else:
            assert "ClientPayloadError" in got.get("error", ""), got
    assert [got["how"] for got in results] == ["read", "read(n)"]


@pytest.mark.parametrize("ending, whole", [("notify", True), ("close", False)])
def test_a_warning_in_the_handshake_is_not_the_end_of_the_stream(mpy, certs, ending, whole):
    # apache's unrecognized_name warning, in the clear before its ServerHello: mbedTLS skips it, and so must the
    # reading of the end (it was taken for the close_notify: the handshake then met an end, and had it not, a FIN
    # would have counted as a clean end)
    with ScriptServer({"/r": [UNTIL_CLOSE] + RECORDS + [0.05, ending]}, certs=certs, hello_alert=True) as srv:
        r = mpy.run(READS, URL=srv.url("/r"))
    assert_read(r.results, whole)


def test_the_same_body_over_plain_tcp_ends_with_the_fin(mpy):
    # (no TLS: the FIN is all there is to end it)
    with ScriptServer({"/r": [UNTIL_CLOSE] + RECORDS + [0.05, "close"]}) as srv:
        r = mpy.run(READS, URL=srv.url("/r"))
    assert [got.get("sha") for got in r.results] == [SHA, SHA]


TUNE = {"retry_base_ms": 1, "retry_max_ms": 2}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ending", ["notify", "notify-hold", "close"])
def test_download_url_takes_a_tls_body_the_connection_frames_only_after_a_close_notify(mpy, certs, mode, ending):
    with ScriptServer({"/r": [UNTIL_CLOSE] + RECORDS + [0.05, ending]}, certs=certs) as srv:
        v = dl(mpy, srv.url("/r"), mode, old=OLD, tune=TUNE)
    if ending != "close":
        assert (v["err"], v["ret"], v["sha"], v["len"]) == (None, "bytes" if mode == "memory" else True, SHA,
                                                            len(BODY)), v
    else:
        failed(v, mode)


def test_a_refused_tls_connection_says_so_as_a_plain_one_does(mpy):
    # The TCP write that fails under TLS is kept by the wire, never told to mbedTLS (aiohttp/wire.py): the handshake
    # then fails on the connection's end, and the error the caller gets must still be the write's, ECONNREFUSED
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r = mpy.run("""
import aiohttp
async def main():
    fds = fd_count()
    async with aiohttp.ClientSession() as session:
        for scheme in ("http", "https"):
            try:
                async with session.get("%s://127.0.0.1:%d/" % (scheme, PORT)):
                    pass
            except aiohttp.ClientConnectorError as e:
                result(scheme=scheme, errno=e.errno)
    result(fds_left=fd_count() - fds)
run(main())
""", PORT=port)
    assert r.results == [{"scheme": "http", "errno": 111}, {"scheme": "https", "errno": 111}, {"fds_left": 0}]
