"""The websocket client against a server that misbehaves on purpose (tools/wsservers.py: ScriptWSServer): bad
frames of every kind RFC 6455 forbids, connections cut inside a frame, bad handshakes, bytes one at a time."""
import hashlib
import struct
import threading

import pytest

from tools.wsservers import accept_key, close_frame, frame, handshake_answer

from test_http_dns import unanswered_port  # noqa: F401 (a fixture)

# A bad frame -> the close code the client must fail the connection with
BAD_FRAMES = {
    "a masked frame": (frame(1, b"hi", mask=b"abcd"), 1002),
    "reserved bits set": (frame(1, b"hi", rsv=4), 1002),
    "an unknown data opcode": (frame(3, b"hi"), 1002),
    "an unknown control opcode": (frame(11), 1002),
    "a control frame over 125 bytes": (frame(9, b"x" * 126), 1002),
    "a fragmented control frame": (frame(9, b"x", fin=False), 1002),
    "a continuation with no message": (frame(0, b"x"), 1002),
    "a new message inside a fragmented one": (frame(1, b"a", fin=False) + frame(1, b"b"), 1002),
    "a length over 2**63": (struct.pack(">BBQ", 0x82, 127, 1 << 63), 1002),
    "a Close with a 1-byte payload": (frame(8, b"\x03"), 1002),
    "a Close with code 1005": (close_frame(1005), 1002),
    "a Close with code 999": (close_frame(999), 1002),
    "a Close with code 5000": (close_frame(5000), 1002),
    "text that is not UTF-8": (frame(1, b"ok \xff\xfe"), 1007),
    "a UTF-16 surrogate in UTF-8": (frame(1, b"\xed\xa0\x80"), 1007),
    "an overlong UTF-8 form": (frame(1, b"\xc0\xaf"), 1007),
    "a code point past U+10FFFF": (frame(1, b"\xf4\x90\x80\x80"), 1007),
    "UTF-8 cut short at the message's end": (frame(1, b"caf\xc3", fin=False) + frame(0, b""), 1007),
    "a Close reason that is not UTF-8": (close_frame(1000, b"\xff"), 1007),
    "a message over max_msg_size": (frame(2, length=1 << 30), 1009),  # announced only: 1 GB never comes
}

FAIL = """
import asyncio

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        msg = await ws.receive(timeout=5)
        result(type=msg.type, error=type(msg.data).__name__, code=getattr(msg.data, "code", None),
               close_code=ws.close_code, closed=ws.closed, after=(await ws.receive()).type, fds=fd_count() - fds,
               reason=str(msg.data))
run(main())
"""


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_a_bad_frame_fails_the_connection_with_its_close_code(mpy, ws_script, name):
    data, code = BAD_FRAMES[name]
    srv = ws_script({"/bad": [data]})
    r = mpy.run(FAIL, URL=srv.url("/bad"))
    reason = r.value.pop("reason")
    assert r.value == {"type": 258, "error": "WebSocketError", "code": code, "close_code": code, "closed": True,
                       "after": 257, "fds": 0}
    assert srv.client_close_codes() == [code]  # said to the server before the connection went
    if code == 1009:  # refused by its announced length, not by a failed attempt to make room for it
        assert "max_msg_size" in reason


# How the client ends while its last message still sits in its socket (the server reads only once the client is
# done, through a small receive buffer) -> the server's script, the client's end, what it reports, our Close's code.
# Whichever way it ends, it reads what the server sent first: a socket closed with bytes unread resets, and the reset
# drops what the server had not read yet.
LAST_MESSAGE_ENDS = {
    # Found by the fuzzer (seed fd20a3c4 case 4281, under load): after a bad frame the client closed its socket with
    # the server's next bytes unread, and Linux's reset threw away the end of the client's last message and its Close
    "a failure": ([frame(1, b"hi", rsv=4) + frame(2, bytes(20000))], """
        msg = await ws.receive()
        result(type=msg.type, close_code=ws.close_code, fds=fd_count() - fds)
""", {"type": 258, "close_code": 1002}, 1002),
    # close(): our Close, then what comes is read up to the server's Close, which a server not reading can't send
    "close()": ([frame(2, bytes(20000))], """
        closed = await ws.close()
        result(closed=closed, close_code=ws.close_code, fds=fd_count() - fds)
""", {"closed": True, "close_code": 1006}, 1000),
    # autoclose: the server's Close, answered with ours, then the connection goes
    "autoclose": ([frame(2, bytes(20000)) + close_frame(4000)], """
        first = await ws.receive()
        msg = await ws.receive()
        result(first=first.type, type=msg.type, close_code=ws.close_code, fds=fd_count() - fds)
""", {"first": 2, "type": 8, "close_code": 4000}, 4000),
}


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("end", LAST_MESSAGE_ENDS)
def test_our_last_message_reaches_a_server_that_reads_late_however_the_websocket_ends(mpy, ws_script, certs, end,
                                                                                   scheme):
    script, code, outcome, close_code = LAST_MESSAGE_ENDS[end]
    gate = threading.Event()
    srv = ws_script({"/late": script + [gate]}, rcvbuf=4096, certs=certs if scheme == "wss" else None)
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL, timeout=aiohttp.ClientWSTimeout(ws_close=0.3))
        await ws.send_bytes(bytes(range(256)) * 1024)  # taken by the socket's send buffer, not sent yet
""" + code + """
run(main())
""", URL=srv.url("/late"))
    gate.set()
    assert r.value == dict(outcome, fds=0)
    assert srv.client_close_codes() == [close_code]
    assert [(op, hashlib.sha256(payload).hexdigest()) for _, op, payload in srv.frames] == [
        (2, hashlib.sha256(bytes(range(256)) * 1024).hexdigest()),
        (8, hashlib.sha256(struct.pack(">H", close_code)).hexdigest())]


def test_a_message_the_heap_cannot_hold_is_refused_with_1009(mpy, ws_script):
    srv = ws_script({"/big": [frame(2, length=3 << 20)]})  # under max_msg_size (4 MB), over a 1 MB heap
    r = mpy.run(FAIL, heapsize="1M", URL=srv.url("/big"))
    assert (r.value["type"], r.value["code"], r.value["fds"]) == (258, 1009, 0)
    assert "no room" in r.value["reason"]
    assert srv.client_close_codes() == [1009]


@pytest.mark.parametrize("op", [1, 2])
def test_a_message_whose_buffer_fits_but_not_its_copy_is_refused_with_1009(mpy, ws_script, op):
    # Found against a real server (websockets, a 1 MB message in a 2 MB heap): the message buffer was made, then the
    # bytes or str made from it ran out of heap, and receive() raised the bare MemoryError, the 1 MB buffer kept
    srv = ws_script({"/echo": ["echo"]})
    r = mpy.run("""
import asyncio, gc

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        gc.collect()
        n = gc.mem_free() * 3 // 5 & ~1  # room for the buffer, none left for a copy of it
        data = b"\\xc3\\xa9" * (n // 2)  # (UTF-8 text too: each character two bytes)
        await ws.send_frame(data, OP)
        data = None
        gc.collect()
        msg = await ws.receive(timeout=10)
        room = bytearray(n)  # the buffer went with the connection
        result(type=msg.type, code=getattr(msg.data, "code", None), close_code=ws.close_code, closed=ws.closed,
               after=(await ws.receive()).type, fds=fd_count() - fds, reason=str(msg.data))
run(main())
""", heapsize="1M", URL=srv.url("/echo"), OP=op)
    assert "no room" in r.value.pop("reason")
    assert r.value == {"type": 258, "code": 1009, "close_code": 1009, "closed": True, "after": 257, "fds": 0}
    assert srv.client_close_codes() == [1009]


def test_max_msg_size_counts_the_whole_fragmented_message(mpy, ws_script):
    srv = ws_script({"/parts": [frame(2, bytes(600), fin=False) + frame(0, bytes(600))]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL, max_msg_size=1000) as ws:
            msg = await ws.receive(timeout=5)
            result(type=msg.type, code=msg.data.code)
run(main())
""", URL=srv.url("/parts"))
    assert r.value == {"type": 258, "code": 1009}


def test_max_msg_size_0_lifts_the_limit_as_in_aiohttp(mpy, ws_script):
    big = bytes(range(256)) * (4 << 12) + b"!"  # 4 MB and a byte: over the default limit
    # then a frame that announces 1 TB: without a limit, the heap is what refuses it
    srv = ws_script({"/big": [frame(2, big), frame(2, length=1 << 40)]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL, max_msg_size=0) as ws:
            data = await ws.receive_bytes(timeout=10)
            msg = await ws.receive(timeout=5)
            result(sha=sha256(data), type=msg.type, code=msg.data.code, reason=str(msg.data))
run(main())
""", heapsize="16M", URL=srv.url("/big"))
    reason = r.value.pop("reason")
    assert r.value == {"sha": hashlib.sha256(big).hexdigest(), "type": 258, "code": 1009}
    assert "no room" in reason


TWO_TEXTS = """
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            result(texts=[await ws.receive_str(timeout=5), await ws.receive_str(timeout=5)])
run(main())
"""

VALID_TEXT = "é ß 한국어 \u07ff \u0800 \ud7ff \ue000 \uffff \U00010000 \U0010ffff 😀"


def test_valid_utf8_split_anywhere_across_fragments_is_accepted(mpy, ws_script):
    data = VALID_TEXT.encode()
    # fragments of 1, 2, 3... bytes: every multi-byte sequence is cut somewhere
    parts, i, k = [], 0, 1
    while i < len(data):
        parts.append(data[i:i + k])
        i, k = i + k, k % 3 + 1
    frames = [frame(1 if j == 0 else 0, p, fin=j == len(parts) - 1) for j, p in enumerate(parts)]
    srv = ws_script({"/text": [b"".join(frames), frame(1, data)]})
    r = mpy.run(TWO_TEXTS, URL=srv.url("/text"))
    assert r.value == {"texts": [VALID_TEXT, VALID_TEXT]}


def test_a_ping_inside_a_fragmented_message_is_answered_not_glued_into_it(mpy, ws_script):
    srv = ws_script({"/ping-inside": [frame(1, b"Hel", fin=False), frame(9, b"ping!"), frame(0, b"lo, ", fin=False),
                                      frame(10, b"unasked pong"), frame(0, b"world")]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            result(text=await ws.receive_str(timeout=5))
run(main())
""", URL=srv.url("/ping-inside"))
    assert r.value == {"text": "Hello, world"}
    assert [(op, payload) for _, op, payload in srv.frames][0] == (10, b"ping!")


def test_frames_trickled_one_byte_at_a_time_arrive_whole(mpy, ws_script):
    data = frame(1, "héllo ".encode() * 30) + frame(2, bytes(range(256)) * 2) + frame(1, b"")
    srv = ws_script({"/trickle": [x for b in data for x in (bytes([b]), 0.0005)]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            result(text=await ws.receive_str(timeout=10), binary=sha256(await ws.receive_bytes(timeout=10)),
                   empty=await ws.receive_str(timeout=10))
run(main())
""", URL=srv.url("/trickle"))
    assert r.value == {"text": "héllo " * 30, "binary": hashlib.sha256(bytes(range(256)) * 2).hexdigest(),
                       "empty": ""}


def test_frames_that_come_with_the_handshake_answer_are_read(mpy, ws_script):
    def answer(key):
        return handshake_answer(key) + frame(1, b"early") + frame(1, b"bird")

    srv = ws_script({}, answers={"/early": answer})
    r = mpy.run(TWO_TEXTS, URL=srv.url("/early"))
    assert r.value == {"texts": ["early", "bird"]}


ENDINGS = """
import asyncio

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        seen = []
        while len(seen) < 5:
            msg = await ws.receive(timeout=5)
            seen.append(msg.type)
            if msg.type in (257, 258):
                result(seen=seen, error=type(msg.data).__name__, close_code=ws.close_code, fds=fd_count() - fds)
                break
run(main())
"""


@pytest.mark.parametrize("how", ["drop", "fin"])
def test_a_connection_cut_inside_a_frame_is_an_error_message(mpy, ws_script, how):
    srv = ws_script({"/cut": [frame(1, b"whole"), frame(2, bytes(100))[:12], 0.05, how]})
    r = mpy.run(ENDINGS, URL=srv.url("/cut"))
    assert r.value["seen"] == [1, 258] and r.value["close_code"] == 1006 and r.value["fds"] == 0
    assert r.value["error"] in ("ServerDisconnectedError", "ClientConnectionError")


def test_a_clean_tcp_close_between_messages_is_closed_with_1006(mpy, ws_script):
    srv = ws_script({"/fin": [frame(1, b"last words"), "fin"]})
    r = mpy.run(ENDINGS, URL=srv.url("/fin"))
    assert r.value == {"seen": [1, 257], "error": "NoneType", "close_code": 1006, "fds": 0}


def _answer(*fields, status=b"101 Switching Protocols", accept=True):
    def answer(key):
        head = [b"HTTP/1.1 " + status] + list(fields)
        if accept:
            head.append(b"Sec-WebSocket-Accept: " + accept_key(key).encode())
        return b"\r\n".join(head) + b"\r\n\r\n"
    return answer


UPGRADE = (b"Upgrade: websocket", b"Connection: Upgrade")
BAD_ANSWERS = {
    "/no-accept": (_answer(*UPGRADE, accept=False), "Invalid challenge response"),
    "/wrong-accept": (_answer(*UPGRADE, b"Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==", accept=False),
                      "Invalid challenge response"),
    "/no-upgrade": (_answer(b"Connection: Upgrade"), "Invalid upgrade header"),
    "/no-connection": (_answer(b"Upgrade: websocket", b"Connection: keep-alive"), "Invalid connection header"),
    "/unasked-protocol": (_answer(*UPGRADE, b"Sec-WebSocket-Protocol: chat"), "subprotocol that was not offered"),
    "/unasked-extension": (_answer(*UPGRADE, b"Sec-WebSocket-Extensions: permessage-deflate"),
                           "extension that was not offered"),
    "/ok-not-101": (_answer(*UPGRADE, status=b"200 OK"), "Invalid response status"),
}


def test_a_bad_handshake_answer_is_refused_and_its_socket_closed(mpy, ws_script):
    srv = ws_script({}, answers={path: a for path, (a, _) in BAD_ANSWERS.items()})
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    async with ws_session() as session:
        fds = fd_count()
        for path in PATHS:
            try:
                await session.ws_connect(URL + path)
                result(path=path, error=None)
            except aiohttp.WSServerHandshakeError as e:
                result(path=path, error=e.message, fds=fd_count() - fds)
run(main())
""", URL=srv.url(""), PATHS=list(BAD_ANSWERS))
    for x in r.results:
        assert BAD_ANSWERS[x["path"]][1] in x["error"] and x["fds"] == 0, x


# ws_connect within the session's timeout: -> the timeout's class, how long it took, the descriptors left
TIMED_HANDSHAKE = """
import asyncio, aiohttp, time

async def main():
    async with ws_session(timeout=aiohttp.ClientTimeout(**TIMEOUT)) as session:
        fds = fd_count()
        t0 = time.ticks_ms()
        try:
            await session.ws_connect(URL)
        except aiohttp.ServerTimeoutError as e:
            result(error=type(e).__name__, ms=time.ticks_diff(time.ticks_ms(), t0), fds=fd_count() - fds)
run(main())
"""


def test_a_server_that_never_answers_times_out_by_the_sessions_sock_read(mpy, ws_script):
    def silent(key):
        import time

        time.sleep(3)
        return b""

    srv = ws_script({}, answers={"/silent": silent})
    r = mpy.run(TIMED_HANDSHAKE, URL=srv.url("/silent"), TIMEOUT={"sock_read": 0.2})
    assert r.value["error"] == "SocketTimeoutError" and r.value["ms"] < 1500 and r.value["fds"] == 0


def test_a_connection_that_is_never_made_times_out_by_the_sessions_connect(mpy, unanswered_port):
    # as a request's connect timeout, and aiohttp's: a ConnectionTimeoutError
    r = mpy.run(TIMED_HANDSHAKE, URL="ws://127.0.0.1:%d/x" % unanswered_port, TIMEOUT={"connect": 0.2})
    assert r.value["error"] == "ConnectionTimeoutError" and r.value["ms"] < 1500 and r.value["fds"] == 0


def test_a_session_closed_during_the_handshake_leaves_no_websocket_open(mpy, ws_script):
    # The session closes the websockets it knows: one whose handshake ended after the close would stay open
    def late(key):
        import time

        time.sleep(0.3)
        return handshake_answer(key)

    srv = ws_script({"/late": []}, answers={"/late": late})
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    fds = fd_count()
    session = ws_session()
    connecting = asyncio.create_task(error_of(session.ws_connect(URL)))
    await asyncio.sleep_ms(50)
    await session.close()
    result(error=(await connecting)[0], fds=fd_count() - fds)
run(main())
""", URL=srv.url("/late"))
    assert r.value == {"error": "ClientConnectionError", "fds": 0}


def test_a_close_without_a_code_is_1005_and_answered_without_one(mpy, ws_script):
    srv = ws_script({"/bare-close": [frame(8)]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            msg = await ws.receive(timeout=5)
            result(type=msg.type, code=msg.data, reason=msg.extra, close_code=ws.close_code)
run(main())
""", URL=srv.url("/bare-close"))
    assert r.value == {"type": 8, "code": 1005, "reason": "", "close_code": 1005}
    assert srv.client_close_codes() == [None]  # an empty Close back: there was no code to echo


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_send_the_reset_connection_refuses_leaves_a_client_error_for_the_reader(mpy, ws_script, certs, scheme):
    # Found by the fuzzer (seed e1 case 138): a send that met the server's reset dropped the connection with the
    # socket's bare OSError, which exception() and a reader woken by the drop (its ERROR message) then gave out.
    # (Over TLS the failed TCP write reaches the send past mbedTLS: aiohttp/wire.py.)
    srv = ws_script({"/reset": ["read", "drop"]}, rcvbuf=4096,  # a reset once our first message came
                    certs=certs if scheme == "wss" else None)
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        await ws.send_str("go")
        send = await error_of(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold: it meets the reset
        e = ws.exception()
        result(send=send[0], exception=type(e).__name__, client_error=isinstance(e, aiohttp.ClientConnectionError),
               close_code=ws.close_code, fds=fd_count() - fds)
run(main())
""", heapsize="20M", URL=srv.url("/reset"))
    assert r.value == {"send": "ClientConnectionResetError", "exception": "ClientConnectionResetError",
                       "client_error": True, "close_code": 1006, "fds": 0}


READ_ON_AFTER_A_RESET = """
import asyncio, select, time

async def read(ws, got):
    msg = await ws.receive(timeout=10)
    got += [msg.type, msg.data if msg.type == 8 else repr(msg.data), msg.extra]

def until_reset(sock):
    # the loop stands still until the server's reset is here: the waiting reader has read nothing of what came
    p = select.poll()
    p.register(sock, select.POLLIN)
    end = time.ticks_add(time.ticks_ms(), 5000)
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        if any(ev & (select.POLLHUP | select.POLLERR) for s, ev, *more in p.ipoll(50)):
            break
    p.unregister(sock)

async def main():
    async with ws_session(CA) as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        got = []
        reader = asyncio.create_task(read(ws, got))
        await asyncio.sleep_ms(0)  # (it waits)
        if STALL:
            await ws.send_str("go")
            until_reset(ws._conn.sock)
            send = await error_of(ws.send_str("more"))  # (no wait before its write: it meets the reset first)
        else:
            send = await error_of(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold
        await reader
        result(send=send[0], got=got, close_code=ws.close_code, closed=ws.closed, after=(await ws.receive()).type,
               fds=fd_count() - fds)
run(main())
"""


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("stall", [False, True])
def test_a_servers_close_before_it_resets_a_send_reaches_the_waiting_reader(mpy, ws_script, certs, scheme, stall):
    # Found against the websockets server, nginx and Node's ws refusing a message over their max size over wss://:
    # their Close 1009 came, then the reset met our send, and the reader got an ERROR, not aiohttp's CLOSE. Either
    # the send's failure dropped the connection before the reader read the Close (stall: 1006), or the reader read
    # it and its answer, waiting behind the send, met the dropped connection (an ERROR with close_code 1009).
    script = ["read", close_frame(1009, b"too big"), 0.05, "drop"] if stall else [
        0.2, close_frame(1009, b"too big"), 0.1, "drop"]  # (a pause: a reset right behind may discard the Close)
    srv = ws_script({"/toobig": script}, rcvbuf=None if stall else 4096, certs=certs if scheme == "wss" else None)
    r = mpy.run(READ_ON_AFTER_A_RESET, heapsize="20M", URL=srv.url("/toobig"), STALL=stall,
                CA=certs.ca_der_path if scheme == "wss" else None)
    assert r.value == {"send": "ClientConnectionResetError", "got": [8, 1009, "too big"], "close_code": 1009,
                       "closed": True, "after": 257, "fds": 0}


CLOSE_BEHIND_A_RESET = """
import asyncio, time

async def main():
    async with ws_session(CA) as session:
        ws = await session.ws_connect(URL)
        reader = asyncio.create_task(ws.receive())
        await asyncio.sleep_ms(100)  # (it waits; the server's Close comes 0.2 s after the handshake, its reset behind)
        time.sleep_ms(400)  # the loop stands still: when the reader reads, the Close and the reset are both here
        msg = await reader
        result(type=msg.type, data=msg.data, extra=msg.extra, close_code=ws.close_code)
run(main())
"""


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_servers_close_with_a_reset_right_behind_is_read(mpy, ws_script, certs, scheme):
    # The frame's header came in the same read of the socket as the reset, which threw it away (py/stream.c
    # mp_stream_rw: readinto's second read met the reset): the reader got an ERROR with ECONNRESET, not the Close
    srv = ws_script({"/bye": [0.2, close_frame(1001, b"going away"), "drop"]},
                    certs=certs if scheme == "wss" else None)
    r = mpy.run(CLOSE_BEHIND_A_RESET, URL=srv.url("/bye"), CA=certs.ca_der_path if scheme == "wss" else None)
    assert r.results == [{"type": 8, "data": 1001, "extra": "going away", "close_code": 1001}]


LOST_IN_A_FULL_HEAP = """
import asyncio

class HeapRanOutAfterTheRead:
    # the socket as a read finds it when the heap runs out after the bytes were read: they went with the error
    def __init__(self, sock):
        self.sock = sock

    def recv(self, n):
        self.sock.recv(n)
        raise MemoryError

    def close(self):
        self.sock.close()

async def main():
    async with ws_session(None) as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        await asyncio.sleep_ms(400)  # both messages are here (they come 0.2 s after the handshake)
        ws._conn.sock = HeapRanOutAfterTheRead(ws._conn.sock)
        error = await error_of(ws.receive())
        result(error=error[0], closed=ws.closed, close_code=ws.close_code)
        msg = await ws.receive(timeout=2)
        result(next=msg.type, fds=fd_count() - fds)
run(main())
"""


def test_a_read_that_runs_out_of_heap_ends_the_websocket_not_its_framing(mpy, ws_script):
    # One read of the socket makes a bytes object (Connection._read_once); when that runs out of heap after the read,
    # what it read is lost. The connection goes with the MemoryError: a receive() after it reading on would take the
    # middle of a message for a frame's header and hand out bytes the server never sent as one.
    srv = ws_script({"/two": [0.2, frame(0x1, b"first message") + frame(0x1, b"second message"), 5]})
    r = mpy.run(LOST_IN_A_FULL_HEAP, URL=srv.url("/two"))
    assert r.results == [{"error": "MemoryError", "closed": True, "close_code": 1006}, {"next": 257, "fds": 0}]


def test_a_reset_while_close_waits_for_the_servers_close_leaves_a_client_error(mpy, ws_script):
    # Found by the fuzzer (seed cl2 case 180): close() read on for the server's Close, met the reset, and kept the
    # socket's bare OSError for exception(), where a receive() that meets it gives a ClientConnectionError
    srv = ws_script({"/reset": ["read", "drop"]})  # our Close is read, then the connection is reset
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        closed = await ws.close()
        e = ws.exception()
        result(closed=closed, exception=type(e).__name__, client_error=isinstance(e, aiohttp.ClientConnectionError),
               close_code=ws.close_code, fds=fd_count() - fds)
run(main())
""", URL=srv.url("/reset"))
    assert r.value == {"closed": True, "exception": "ClientConnectionError", "client_error": True, "close_code": 1006,
                       "fds": 0}
    assert srv.client_close_codes() == [1000]
