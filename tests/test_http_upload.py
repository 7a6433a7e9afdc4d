"""aiohttp client on MicroPython: request bodies that stream, as aiohttp sends them: a file opened "rb" (with its
size as Content-Length) and an async iterable of bytes (Transfer-Encoding: chunked), never read whole into the heap."""
import hashlib

import pytest

from tools.testservers import ScriptServer

# A file of SIZE bytes (every byte value in turn, written a KB at a time), and an async iterable of pieces
UPLOAD = """
import aiohttp
from testlib import pattern

def write_file(path, size):
    with open(path, "wb") as f:
        for at in range(0, size, 1024):
            f.write(pattern(min(1024, size - at)))

class Pieces:
    # the async iterable an app hands data=: each piece when asked (an empty one too, which must not end the body)
    def __init__(self, sizes):
        self._sizes = list(sizes)
    def __aiter__(self):
        return self
    async def __anext__(self):
        if not self._sizes:
            raise StopAsyncIteration
        return pattern(self._sizes.pop(0))

async def echo(session, url, data):
    # -> what the server received: its length, sha256 and the head's framing fields
    async with session.post(url, data=data) as resp:
        sent = await resp.json()
    framing = {k.lower(): v for k, v in sent["headers"] if k.lower() in ("content-length", "transfer-encoding")}
    return {"len": sent["body_len"], "sha": sent["body_sha256"], "framing": framing}
"""


def sha_of_pattern(*sizes):
    return hashlib.sha256(b"".join(bytes(range(256)) * (n // 256) + bytes(range(n % 256)) for n in sizes)).hexdigest()


def test_a_file_is_streamed_with_its_size_as_content_length(mpy, fault):
    # 256 KB from a file in a 128 KB heap: read and sent a piece at a time, and the connection serves again
    r = mpy.run(UPLOAD + """
async def main():
    write_file("upload.bin", SIZE)
    async with aiohttp.ClientSession() as session:
        with open("upload.bin", "rb") as f:
            result(**await echo(session, URL, f))
        with open("upload.bin", "rb") as f:
            f.seek(SIZE - 1000)  # from where the file stands, as aiohttp sends it
            result(**await echo(session, URL, f))
run(main())
""", URL=fault.url("/echo"), SIZE=262144, heapsize="128k", compiled=True)
    whole = b"".join(bytes(range(256)) * 4 for _ in range(256))
    assert r.results == [
        {"len": 262144, "sha": hashlib.sha256(whole).hexdigest(), "framing": {"content-length": "262144"}},
        {"len": 1000, "sha": hashlib.sha256(whole[-1000:]).hexdigest(), "framing": {"content-length": "1000"}}]


def test_an_async_iterable_is_sent_chunked(mpy, fault):
    r = mpy.run(UPLOAD + """
async def main():
    async with aiohttp.ClientSession() as session:
        result(**await echo(session, URL, Pieces([3000, 0, 1, 700])))
        result(**await echo(session, URL, Pieces([])))
run(main())
""", URL=fault.url("/echo"))
    assert r.results == [
        {"len": 3701, "sha": sha_of_pattern(3000, 1, 700), "framing": {"transfer-encoding": "chunked"}},
        {"len": 0, "sha": sha_of_pattern(), "framing": {"transfer-encoding": "chunked"}}]


def test_a_piece_that_is_no_bytes_is_a_type_error(mpy, fault):
    # A str piece counted its characters in the chunk's size line and sent its UTF-8 bytes: the server read a
    # body other than the one meant, and no error was raised. aiohttp raises TypeError; the session goes on.
    r = mpy.run(UPLOAD + """
class Texts(Pieces):
    async def __anext__(self):
        if not self._sizes:
            raise StopAsyncIteration
        return self._sizes.pop(0)

async def main():
    async with aiohttp.ClientSession() as session:
        try:
            result(sent=await echo(session, URL, Texts(["caf\u00e9"])))
        except TypeError:
            result(refused=True)
        result(**await echo(session, URL, Pieces([10])))
run(main())
""", URL=fault.url("/echo"))
    assert r.results == [{"refused": True},
                         {"len": 10, "sha": sha_of_pattern(10), "framing": {"transfer-encoding": "chunked"}}]


def test_a_body_that_fails_after_the_head_went_out_is_no_connect_error(mpy, fault):
    # The connection was made (the head went out on it): the body's own OSError (a file that can't be read, a
    # sensor gone) is a ClientOSError, not the ClientConnectorError of a connection that could not be made
    r = mpy.run(UPLOAD + """
import errno
class Failing(Pieces):
    async def __anext__(self):
        if not self._sizes:
            raise OSError(errno.EIO)
        return pattern(self._sizes.pop(0))

async def main():
    async with aiohttp.ClientSession() as session:
        try:
            await echo(session, URL, Failing([1000]))
        except aiohttp.ClientConnectionError as e:
            result(error=type(e).__name__, errno=e.errno, connector=isinstance(e, aiohttp.ClientConnectorError))
        result(**await echo(session, URL, Pieces([10])))
run(main())
""", URL=fault.url("/echo"))
    assert r.results[0] == {"error": "ClientOSError", "errno": 5, "connector": False}, r.results
    assert r.results[1]["len"] == 10, r.results


@pytest.mark.parametrize("code", [307, 308])
def test_a_redirect_that_keeps_the_body_sends_a_file_again_and_refuses_an_iterator(mpy, fault, code):
    r = mpy.run(UPLOAD + """
async def main():
    write_file("upload.bin", 5000)
    async with aiohttp.ClientSession() as session:
        with open("upload.bin", "rb") as f:
            result(**await echo(session, URL, f))
        try:
            await echo(session, URL, Pieces([10]))
        except aiohttp.ClientPayloadError as e:
            result(refused=str(e))
run(main())
""", URL=fault.url("/redirect?code=%d&to=/echo" % code))
    assert r.results == [{"len": 5000, "sha": sha_of_pattern(5000), "framing": {"content-length": "5000"}},
                         {"refused": "a streamed body can't be sent again to %s" % fault.url("/echo")}]


REFUSED = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("body", ["file", "iterable"])
@pytest.mark.parametrize("script", [[REFUSED, "reset"], [REFUSED, 0.3, "reset"], [REFUSED, 30, "reset"]],
                         ids=["reset", "stall-then-reset", "stall"])
def test_an_answer_that_comes_before_the_whole_body_went_out_is_the_answer(mpy, certs, scheme, body, script):
    # A server that refuses an upload (nginx's client_max_body_size, a 401) answers after the head and closes
    # without reading the rest: the client's next write meets the reset. RFC 9112 section 9.5: the answer is the
    # caller's, not that write error (it was a ClientOSError ECONNRESET), and the connection serves nothing more.
    # Over TLS as well: MicroPython's TLS socket refuses every read after a write failed (modtls_mbedtls.c
    # last_error), so the wire under it keeps a failed TCP write from mbedTLS (aiohttp/wire.py).
    # 16 MB: more than the socket buffers on both sides hold, so the body can't all go out before the reset. A
    # server that neither reads nor closes: the answer once the write has waited its timeout (the connect timeout).
    srv = ScriptServer({"/upload": script, "/next": [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"]},
                       certs=certs if scheme == "https" else None, unread=("/upload",))
    try:
        r = mpy.run(UPLOAD + """
class Same(Pieces):
    # 16 MB of one 64 KB piece, again and again
    async def __anext__(self):
        if not self._sizes:
            raise StopAsyncIteration
        self._sizes.pop()
        return PIECE

PIECE = pattern(65536)

async def main():
    if BODY == "file":
        with open("upload.bin", "wb") as f:
            for _ in range(256):
                f.write(PIECE)
    fds = fd_count()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(connect=1)) as session:
        data = open("upload.bin", "rb") if BODY == "file" else Same([0] * 256)
        async with session.post(URL, data=data) as resp:
            result(status=resp.status, body=await resp.text())
        if BODY == "file":
            data.close()
        async with session.get(NEXT) as resp:
            result(next=await resp.text())
    result(fds_left=fd_count() - fds)
run(main())
""", URL=srv.url("/upload"), NEXT=srv.url("/next"), BODY=body)
    finally:
        srv.close()
    assert r.results == [{"status": 413, "body": "too large"}, {"next": "next"}, {"fds_left": 0}]
    assert [number for number, _, _ in srv.requests] == [1, 2]
