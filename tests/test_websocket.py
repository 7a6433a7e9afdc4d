"""The websocket client (session.ws_connect) on MicroPython against real servers: aiohttp.web's websocket handler
and the websockets package's server, plain and TLS (fixtures in conftest.py, servers in tools/wsservers.py)."""
import pytest

from tools.wsservers import close_frame, frame, handshake_answer


SIZES = [0, 125, 126, 65535, 65536, 1 << 20]


def test_echo_of_text_and_binary_of_every_length_is_exact(mpy, ws_server):
    r = mpy.run("""
import asyncio
from aiohttp import WSMsgType

async def main():
    async with ws_session(CA) as session:
        async with session.ws_connect(URL) as ws:
            for n in SIZES:
                text, data = pattern(n, text=True), pattern(n)
                await ws.send_str(text)
                msg = await ws.receive()
                assert msg.type == WSMsgType.TEXT and msg.data == text, (n, msg.type, len(msg.data or ""))
                await ws.send_bytes(data)
                msg = await ws.receive()
                assert msg.type == WSMsgType.BINARY and msg.data == data, (n, msg.type, len(msg.data or b""))
                result(size=n, text=sha256(msg.data), binary=sha256(data))
run(main())
""", heapsize="8M", CA=ws_server.ca, URL=ws_server.url("/echo"), SIZES=SIZES)
    assert [x["size"] for x in r.results] == SIZES


def test_fragmented_messages_are_reassembled(mpy, ws_websockets):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            text = await ws.receive_str()
            data = await ws.receive_bytes()
            result(text=text, binary=sha256(data), size=len(data))
run(main())
""", URL=ws_websockets.url("/fragments/40"))
    import hashlib

    assert r.value == {"text": "".join("part %d;" % i for i in range(40)),
                       "binary": hashlib.sha256(b"".join(bytes([i]) * 100 for i in range(40))).hexdigest(),
                       "size": 4000}


@pytest.mark.parametrize("server", ["ws_aiohttp", "ws_websockets"])
def test_the_servers_ping_is_answered_with_its_payload(mpy, server, request):
    srv = request.getfixturevalue(server)
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            result(said=await ws.receive_str(timeout=5))
run(main())
""", URL=srv.url("/ping"))
    assert r.value == {"said": "pong: are you there"}


def test_our_ping_gets_its_pong_and_autoping_off_shows_both(mpy, ws_server):
    r = mpy.run("""
import asyncio
from aiohttp import WSMsgType

async def main():
    async with ws_session(CA) as session:
        async with session.ws_connect(URL, autoping=False) as ws:
            await ws.ping(b"hello?")
            msg = await ws.receive(timeout=5)
            result(type=msg.type, data=msg.data.decode())
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/echo"))
    assert r.value == {"type": 10, "data": "hello?"}


def test_a_close_from_the_server_ends_async_for_with_its_code_and_reason(mpy, ws_server):
    r = mpy.run("""
import asyncio
from aiohttp import WSMsgType

async def main():
    async with ws_session(CA) as session:
        async with session.ws_connect(URL) as ws:
            seen = []
            async for msg in ws:
                seen.append(msg.type)
            result(seen=seen, close_code=ws.close_code, closed=ws.closed, after=(await ws.receive()).type)
        async with session.ws_connect(URL) as ws:
            msg = await ws.receive()
            result(type=msg.type, code=msg.data, reason=msg.extra)
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/close/4001"))
    assert r.results[0] == {"seen": [], "close_code": 4001, "closed": True, "after": 257}
    assert r.results[1] == {"type": 8, "code": 4001, "reason": "bye"}
    assert ws_server.close_codes("/close/4001", count=2)[:2] == [4001, 4001]  # our Close echoes theirs


def test_our_close_sends_its_code_and_reason_and_waits_for_the_servers(mpy, ws_server):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session(CA) as session:
        ws = await session.ws_connect(URL)
        first = await ws.close(code=4002, message="done")
        again = await ws.close()
        result(first=first, again=again, closed=ws.closed, code=ws.close_code, after=(await ws.receive()).type)
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/echo?our-close"))
    assert r.value["first"] is True and r.value["again"] is False and r.value["closed"] is True
    assert r.value["after"] == 257
    assert ws_server.close_codes("/echo?our-close") == [4002]
    # the server's answer: websockets echoes the code, aiohttp.web answers 1000
    assert r.value["code"] == (1000 if "aiohttp" in type(ws_server).__name__.lower() else 4002)


def test_close_from_another_task_gives_the_waiting_receive_closing_even_if_the_server_answers_at_once(mpy,
                                                                                                     ws_script):
    # Found by the fuzzer (seed hb2 case 204, 2 runs in 3): close() wakes the waiting receive() once its Close is out
    # (woken before, the reader's task could drop the connection before our Close went); when the server's answer
    # came first, the reader read it and returned a CLOSE message instead
    srv = ws_script({"/answer": []})  # answers our Close with its code at once
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        fds = fd_count()
        seen = set()
        for i in range(20):
            ws = await session.ws_connect(URL)
            reader = asyncio.create_task(ws.receive())
            await asyncio.sleep(0)  # the reader waits on the socket
            closed = await ws.close()
            seen.add(((await reader).type, closed, (await ws.receive()).type))
        result(seen=sorted(seen), fds=fd_count() - fds)
run(main())
""", URL=srv.url("/answer"))
    assert r.value == {"seen": [[256, True, 257]], "fds": 0}  # CLOSING, close() did it, then CLOSED
    assert srv.client_close_codes() == [1000] * 20


# What the server sends while our Close waits behind a send -> how the waiting receive() ends, and close_code. Found
# by the fuzzer: in CLOSING, the reader took the server's own Close for the answer to ours (seed f480f036 case 1358)
# and a bad frame for a failure after our Close (seed wsfuzz case 29), dropped the connection, and ours never went.
WHILE_OUR_CLOSE_WAITS = {
    "the server's own Close": (close_frame(4001), [256, None], 4001),
    "a bad frame": (frame(1, b"x", rsv=4), [258, 1002], 1002),
}


@pytest.mark.parametrize("what", WHILE_OUR_CLOSE_WAITS)
def test_our_close_goes_out_whatever_comes_while_it_waits_behind_a_send(mpy, ws_script, what):
    data, reader, code = WHILE_OUR_CLOSE_WAITS[what]
    srv = ws_script({"/late": [0.2, data]}, rcvbuf=4096)  # reads nothing before it sends data
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        send = asyncio.create_task(error_of(ws.send_bytes(bytes(8 << 20))))  # holds the socket until the server reads
        reader = asyncio.create_task(ws.receive())
        await asyncio.sleep(0)
        closed = await ws.close()  # our Close waits behind the message; the server's frame comes meanwhile
        msg = await reader
        result(closed=closed, reader=[msg.type, getattr(msg.data, "code", None)], send=(await send)[0],
               close_code=ws.close_code, fds=fd_count() - fds)
run(main())
""", heapsize="20M", URL=srv.url("/late"))
    assert r.value == {"closed": True, "reader": reader, "send": None, "close_code": code, "fds": 0}
    assert srv.client_close_codes() == [1000]


def test_subprotocols_are_negotiated(mpy, ws_server):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session(CA) as session:
        for offer in (("superchat", "chat"), ("chat",), ("mqtt",), ()):
            async with session.ws_connect(URL, protocols=offer) as ws:
                result(offer=list(offer), chosen=ws.protocol)
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/echo"))
    chosen = {tuple(x["offer"]): x["chosen"] for x in r.results}
    assert chosen[("chat",)] == "chat" and chosen[("mqtt",)] is None and chosen[()] is None
    assert chosen[("superchat", "chat")] in ("superchat", "chat")


def test_the_request_carries_host_origin_and_the_sessions_headers(mpy, ws_server):
    r = mpy.run("""
import asyncio, json

async def main():
    async with ws_session(CA, headers={"User-Agent": "MicroPythonOS/1.0", "X-Session": "s"}) as session:
        for kw in ({}, {"origin": "https://app.example", "headers": [("X-Session", "call"), ("X-Pair", "p")]}):
            async with session.ws_connect(URL, **kw) as ws:
                result(headers={k.lower(): v for k, v in json.loads(await ws.receive_str())})
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/headers"))
    plain, given = (x["headers"] for x in r.results)
    assert plain["host"] == "127.0.0.1:%d" % ws_server.port
    assert plain["upgrade"] == "websocket" and plain["sec-websocket-version"] == "13"
    assert plain["user-agent"] == "MicroPythonOS/1.0" and plain["x-session"] == "s"
    assert "origin" not in plain  # a non-browser client sends none unless asked (RFC 6455 section 4.1)
    assert given["origin"] == "https://app.example" and given["x-session"] == "call" and given["x-pair"] == "p"
    assert plain["sec-websocket-key"] != given["sec-websocket-key"]


def test_a_refused_handshake_raises_with_the_status_and_no_redirect_is_followed(mpy, ws_server):
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    async with ws_session(CA) as session:
        fds = fd_count()
        for path in ("/status/404", "/status/302"):
            try:
                await session.ws_connect(URL + path)
            except aiohttp.WSServerHandshakeError as e:
                result(path=path, status=e.status, message=e.message, fds=fd_count() - fds)
run(main())
""", CA=ws_server.ca, URL=ws_server.url(""))
    assert [(x["status"], x["fds"]) for x in r.results] == [(404, 0), (302, 0)]
    assert "redirects are not followed" in r.results[1]["message"]


@pytest.mark.parametrize("server", ["ws_aiohttp_tls", "ws_websockets_tls"])
def test_three_websockets_over_tls_with_4_kb_messages_both_ways_at_once(mpy, server, request):
    # micropython-lib issue 851 (TLS websockets fail once messages reach 2-4 KB) and 1018 (concurrent
    # websockets from one session): each websocket sends 4 KB messages from one task while another reads
    # the echoes, for 2 seconds, three websockets on one session
    ws_server = request.getfixturevalue(server)
    r = mpy.run("""
import asyncio, time
from aiohttp import WSMsgType

async def one(session, i):
    async with session.ws_connect(URL) as ws:
        sent = new_sha()
        got = new_sha()
        count = [0, 0]
        end = time.ticks_add(time.ticks_ms(), 2000)

        async def sender():
            k = 0
            while time.ticks_diff(end, time.ticks_ms()) > 0:
                data = bytes([i, k & 255]) * 2048
                sent.update(data)
                await ws.send_bytes(data)
                k += 1
                count[0] = k
            await ws.send_str("end")

        task = asyncio.create_task(sender())
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                break
            assert msg.type == WSMsgType.BINARY and len(msg.data) == 4096, msg
            got.update(msg.data)
            count[1] += 1
        await task
        return count, hexdigest(sent) == hexdigest(got)

async def main():
    fds = fd_count()
    async with ws_session(CA) as session:
        done = await asyncio.gather(*[one(session, i) for i in range(3)])
    result(done=done, fds=fd_count() - fds)
run(main())
""", timeout=120, CA=ws_server.ca, URL=ws_server.url("/echo"))
    for (sent, echoed), same in r.value["done"]:
        assert sent == echoed and sent >= 20 and same
    assert r.value["fds"] == 0


def test_a_sender_the_socket_never_makes_wait_lets_other_tasks_run(mpy, ws_script):
    # Loopback takes megabytes before a send must wait: a websocket sending in a loop must still step aside every
    # 64 KB, or the UI and the session's other websockets stop for as long as its socket takes the frames
    srv = ws_script({"/sink": []})  # reads every frame up to our Close
    r = mpy.run("""
import asyncio

async def send_all(ws):
    for k in range(1024):
        await ws.send_bytes(bytes(1024))  # frames of one write each
    await ws.send_bytes(bytes(1 << 20))  # and a frame of many

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            _, turns = await turns_during(send_all(ws))
    result(turns=turns)
run(main())
""", URL=srv.url("/sink"))
    assert r.value["turns"] >= 30  # one at least every 64 KB of the two megabytes
    assert [len(p) for _, op, p in srv.frames if op == 2] == [1024] * 1024 + [1 << 20]


def test_closing_the_session_closes_its_websockets(mpy, ws_server):
    r = mpy.run("""
import asyncio

async def main():
    fds = fd_count()
    session = ws_session(CA)
    a = await session.ws_connect(URL)
    b = await session.ws_connect(URL)
    reader = asyncio.create_task(a.receive())
    await asyncio.sleep_ms(50)
    await session.close()
    msg = await reader
    result(reader=msg.type, closed=[a.closed, b.closed], codes=[a.close_code, b.close_code],
           fds=fd_count() - fds, after=(await b.receive()).type)
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/echo?session-close"))
    assert r.value == {"reader": 257, "closed": [True, True], "codes": [1006, 1006], "fds": 0, "after": 257}
    # going away, said before the sockets closed
    assert ws_server.close_codes("/echo?session-close", count=2) == [1001, 1001]


def test_an_abrupt_tcp_close_is_a_closed_message_not_a_hang(mpy, ws_server):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session(CA) as session:
        async with session.ws_connect(URL) as ws:
            msg = await ws.receive(timeout=5)
            result(type=msg.type, code=ws.close_code)
run(main())
""", CA=ws_server.ca, URL=ws_server.url("/drop"))
    assert r.value["type"] in (257, 258) and r.value["code"] == 1006


def test_heartbeat_keeps_a_live_connection_open(mpy, ws_aiohttp):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL, heartbeat=0.1) as ws:
            try:
                await ws.receive(timeout=0.6)  # six periods of silence from the application
            except asyncio.TimeoutError:
                pass
            await ws.send_str("still there?")
            result(echo=await ws.receive_str(), closed=ws.closed)
run(main())
""", URL=ws_aiohttp.url("/echo"))
    assert r.value == {"echo": "still there?", "closed": False}


@pytest.mark.parametrize("days", [7, 30])  # more than a 32-bit port's ticks_ms can time; than a machine word in ms
def test_timeouts_and_heartbeat_of_days_are_waited_as_ticks_allow(mpy, ws_aiohttp, days):
    # asyncio orders its waits by ticks_diff: a wait timed too far ahead passes for due before a task queued a moment
    # earlier, and the loop sleeps on it instead of running that task (the ticker here)
    r = mpy.run("""
import asyncio, aiohttp, time

async def main():
    turns = [0]

    async def ticker():
        while True:
            turns[0] += 1
            await asyncio.sleep_ms(0)

    timeout = aiohttp.ClientTimeout(total=S, connect=S, sock_read=S)
    async with ws_session(timeout=timeout) as session:
        async with session.ws_connect(URL, heartbeat=S, receive_timeout=S,
                                      timeout=aiohttp.ClientWSTimeout(ws_close=S)) as ws:
            task = asyncio.create_task(ticker())
            await ws.send_bytes(pattern(5000))
            time.sleep_ms(5)  # work on the loop: the ticker waits in the queue
            echo = await ws.receive_bytes(timeout=S)
            before = turns[0]
            await asyncio.sleep_ms(10)
            task.cancel()
            result(echo=sha256(echo), sent=sha256(pattern(5000)), ticked=turns[0] > before, closed=await ws.close())
run(main())
""", timeout=20, URL=ws_aiohttp.url("/echo"), S=days * 86400)
    assert r.value == {"echo": r.value["sent"], "sent": r.value["sent"], "ticked": True, "closed": True}


# --- cancellation and timeouts ------------------------------------------------------------------------------

def test_cancelling_at_any_point_leaks_no_socket(mpy, ws_script):
    def slow_answer(key):
        import time

        time.sleep(0.01)
        return handshake_answer(key)

    srv = ws_script({"/slow": [0.02, frame(1, b"a" * 3000), "read"]}, answers={"/slow": slow_answer})
    r = mpy.run("""
import asyncio

async def use(session):
    async with session.ws_connect(URL) as ws:
        await ws.receive()
        await ws.send_bytes(bytes(100000))
        await ws.receive()

async def main():
    fds = fd_count()
    cancelled = 0
    async with ws_session() as session:
        for i in range(60):  # cancelled while connecting, in the handshake, receiving, sending
            task = asyncio.create_task(use(session))
            await asyncio.sleep_ms(i // 2)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
        still_open = len(session._websockets)
    result(cancelled=cancelled, still_open=still_open, fds=fd_count() - fds)
run(main())
""", timeout=120, URL=srv.url("/slow"))
    assert r.value["cancelled"] >= 50 and r.value["still_open"] == 0 and r.value["fds"] == 0


@pytest.mark.asyncio_paths  # receive()'s timeout tells its own cancel from others' by asyncio's internals
def test_a_timed_out_receive_loses_no_byte_of_the_message(mpy, ws_script):
    data = frame(2, bytes(range(256)) * 64)  # 16 KB, sent in four pieces a while apart
    srv = ws_script({"/slow": [data[:5], 0.3, data[5:3000], 0.3, data[3000:9000], 0.3, data[9000:]]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            timeouts = 0
            while True:
                try:
                    msg = await ws.receive(timeout=0.05)
                    break
                except asyncio.TimeoutError:
                    timeouts += 1
            result(timeouts=timeouts, sha=sha256(msg.data))
run(main())
""", URL=srv.url("/slow"))
    import hashlib

    assert r.value["timeouts"] >= 3 and r.value["sha"] == hashlib.sha256(bytes(range(256)) * 64).hexdigest()


@pytest.mark.asyncio_paths  # receive()'s timeout tells its own cancel from others' by asyncio's internals
def test_a_message_read_just_as_the_receive_times_out_is_not_lost(mpy, ws_script):
    # Another task holds the loop (a UI frame) while the message comes in, and again once receive()'s task is
    # woken for it, until past its timeout: the message is read after the deadline, and must still be handed out
    # (by that receive, or by the next one once that one raised TimeoutError)
    message = bytes(range(256)) * 40
    srv = ws_script({"/late": ["read", frame(2, message), frame(2, b"after")]})
    r = mpy.run("""
import asyncio, time
from aiohttp import WSMsgType

async def busy_ui(ws):
    await asyncio.sleep_ms(20)  # the receive below waits for the socket
    await ws.send_str("go")  # the server's message comes while the loop is busy
    time.sleep_ms(300)
    await asyncio.sleep_ms(0)  # the receive's task is woken here, before its timeout
    time.sleep_ms(400)  # and runs after it

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            ui = asyncio.create_task(busy_ui(ws))
            got = []
            while len(got) < 2:
                try:
                    msg = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type != WSMsgType.BINARY:
                    got.append([msg.type, None])  # (the connection ended)
                    break
                got.append([msg.type, sha256(msg.data)])
            await ui
    result(got=got)
run(main())
""", URL=srv.url("/late"))
    import hashlib

    assert r.value["got"] == [[2, hashlib.sha256(data).hexdigest()] for data in (message, b"after")]


def test_a_receive_timing_out_does_not_strand_a_send_waiting_on_the_same_socket(mpy, ws_script):
    # asyncio's IOQueue.remove() drops both directions of a socket when one waiting task is cancelled
    srv = ws_script({"/busy": [1.0, "read", frame(1, b"got it")]}, rcvbuf=4096)
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            send = asyncio.create_task(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold
            await asyncio.sleep_ms(200)
            waiting = not send.done()
            try:
                await ws.receive(timeout=0.2)
            except asyncio.TimeoutError:
                pass
            await asyncio.wait_for(send, 10)
            result(waiting=waiting, reply=await ws.receive_str(timeout=10))
run(main())
""", heapsize="20M", URL=srv.url("/busy"))
    assert r.value == {"waiting": True, "reply": "got it"}


# The server's control frame -> how it ends when the reader's answer to it waits while another task sends a message
# larger than the socket buffers hold, and the reading task is cancelled there (an app closing its screen)
CANCELLED_WHILE_ANSWERING = {
    "a ping": (frame(9, b"ping"),
               {"reader": "CancelledError", "closed": False, "send": "returned", "next": "got it", "fds": 1}),
    # our Close can no longer go out: nor does the connection stay
    "a Close": (close_frame(4000),
                {"reader": "CancelledError", "closed": True, "send": "ClientConnectionResetError", "next": 257,
                 "fds": 0}),
}


@pytest.mark.parametrize("control", CANCELLED_WHILE_ANSWERING)
def test_a_reader_cancelled_while_its_answer_waits_behind_a_send_is_cancelled(mpy, ws_script, control):
    data, outcome = CANCELLED_WHILE_ANSWERING[control]
    srv = ws_script({"/busy": [0.2, data, 1.0, "read", frame(1, b"got it")]}, rcvbuf=4096)
    r = mpy.run("""
import asyncio

async def ending(task):
    try:
        await task
        return "returned"
    except BaseException as e:
        return type(e).__name__

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL)
        send = asyncio.create_task(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold
        reader = asyncio.create_task(ws.receive())
        await asyncio.sleep_ms(500)
        reader.cancel()
        result(reader=await ending(reader), closed=ws.closed, send=await ending(send))
        msg = await ws.receive(timeout=10)
        result(next=msg.data if msg.type == 1 else msg.type, fds=fd_count() - fds)
run(main())
""", heapsize="20M", URL=srv.url("/busy"))
    assert dict(r.results[0], **r.results[1]) == outcome


def test_close_gives_up_within_ws_close_on_a_server_that_stopped_reading(mpy, ws_script):
    srv = ws_script({"/deaf": [5.0]}, rcvbuf=4096)  # reads nothing for 5 s
    r = mpy.run("""
import asyncio, aiohttp, time

async def main():
    async with ws_session() as session:
        fds = fd_count()
        ws = await session.ws_connect(URL, timeout=aiohttp.ClientWSTimeout(ws_close=0.2))
        send = asyncio.create_task(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold
        await asyncio.sleep_ms(100)
        t0 = time.ticks_ms()
        closed = await ws.close()  # our Close waits behind the message, which the server does not take
        result(closed=closed, ms=time.ticks_diff(time.ticks_ms(), t0), fds=fd_count() - fds,
               send=(await error_of(send))[0])
run(main())
""", heapsize="20M", URL=srv.url("/deaf"))
    assert r.value.pop("ms") < 1000
    assert r.value == {"closed": True, "fds": 0, "send": "ClientConnectionResetError"}


def test_heartbeat_fails_a_connection_whose_pongs_stop(mpy, ws_script):
    srv = ws_script({"/mute": [5.0]})  # reads nothing, answers nothing
    r = mpy.run("""
import asyncio, time

async def main():
    async with ws_session() as session:
        t0 = time.ticks_ms()
        async with session.ws_connect(URL, heartbeat=0.2) as ws:
            msg = await ws.receive()
            result(type=msg.type, error=type(msg.data).__name__, code=ws.close_code,
                   same=ws.exception() is msg.data, ms=time.ticks_diff(time.ticks_ms(), t0))
run(main())
""", URL=srv.url("/mute"))
    assert r.value["type"] == 258 and r.value["error"] == "ServerTimeoutError" and r.value["code"] == 1006
    assert r.value["same"] and 250 <= r.value["ms"] < 1500


def test_closing_while_the_heartbeats_ping_waits_behind_a_send_is_a_clean_close(mpy, ws_script):
    # The ping (after 1 s of quiet, given 0.5 s to go out) waits for the frame being sent; close() stops the
    # heartbeat there, inside its bounded send, and its own Close goes out once the frame has
    srv = ws_script({"/busy": [1.5, "read"]}, rcvbuf=4096)
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        ws = await session.ws_connect(URL, heartbeat=1.0)
        send = asyncio.create_task(ws.send_bytes(bytes(8 << 20)))  # more than the socket buffers hold
        await asyncio.sleep_ms(1200)
        closed = await ws.close()
        sent = await error_of(send)
        result(closed=closed, sent=sent[0], code=ws.close_code, exception=repr(ws.exception()))
run(main())
""", heapsize="20M", URL=srv.url("/busy"))
    assert r.value == {"closed": True, "sent": None, "code": 1000, "exception": "None"}
    assert srv.client_close_codes() == [1000]


def test_heartbeat_keeps_a_connection_open_while_a_long_message_arrives_slowly(mpy, ws_script):
    # 20 KB in 1 KB pieces 50 ms apart: a second of one message, five heartbeat periods
    message = bytes(range(256)) * 80
    data = frame(2, message)
    srv = ws_script({"/slow": [x for i in range(0, len(data), 1000) for x in (data[i:i + 1000], 0.05)]})
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL, heartbeat=0.2) as ws:
            msg = await ws.receive()
            result(type=msg.type, sha=sha256(msg.data) if msg.type == 2 else repr(msg.data), closed=ws.closed)
run(main())
""", URL=srv.url("/slow"))
    import hashlib

    assert r.value == {"type": 2, "sha": hashlib.sha256(message).hexdigest(), "closed": False}


# --- the API around the messages ----------------------------------------------------------------------------

def test_two_tasks_sending_at_once_never_interleave_their_frames(mpy, ws_aiohttp):
    r = mpy.run("""
import asyncio
from aiohttp import WSMsgType

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            sends = [asyncio.create_task(ws.send_bytes(bytes([i]) * 300000)) for i in range(3)]
            sends.append(asyncio.create_task(ws.send_str("small")))
            got = []
            for i in range(4):
                msg = await ws.receive(timeout=10)
                got.append(msg.data if msg.type == WSMsgType.TEXT else (msg.data[0], len(msg.data),
                                                                       msg.data.count(bytes([msg.data[0]]))))
            await asyncio.gather(*sends)
            result(got=sorted(got, key=str))
run(main())
""", heapsize="8M", URL=ws_aiohttp.url("/echo"))
    assert r.value == {"got": [[0, 300000, 300000], [1, 300000, 300000], [2, 300000, 300000], "small"]}


def test_json_helpers_undecoded_text_and_aiohttps_names(mpy, ws_aiohttp):
    r = mpy.run("""
import asyncio, sys, aiohttp

async def main():
    loaded_by_import = "aiohttp.websocket" in sys.modules
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            await ws.send_json({"kind": 1, "tags": ["a"]})
            back = await ws.receive_json()
            await ws.send_json([1, 2])
            msg = await ws.receive()
            try:
                await ws.send_str("text")
                await ws.receive_bytes()
                wrong = None
            except aiohttp.WSMessageTypeError as e:
                wrong = isinstance(e, TypeError)
            result(back=back, json=msg.json(), wrong_type=wrong, same=ws.ws is ws, error=ws.exception(),
                   loaded_by_import=loaded_by_import)
        async with session.ws_connect(URL, decode_text=False) as ws:
            await ws.send_str("héllo")
            msg = await ws.receive()
            result(raw=list(msg.data), type=msg.type)
    W = aiohttp.WSMsgType
    result(types=[W.CONTINUATION, W.TEXT, W.BINARY, W.PING, W.PONG, W.CLOSE, W.CLOSING, W.CLOSED, W.ERROR],
           codes=[aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.PROTOCOL_ERROR, aiohttp.WSCloseCode.MESSAGE_TOO_BIG])
run(main())
""", URL=ws_aiohttp.url("/echo"))
    assert r.results[0] == {"back": {"kind": 1, "tags": ["a"]}, "json": [1, 2], "wrong_type": True, "same": True,
                            "error": None, "loaded_by_import": False}
    assert r.results[1] == {"raw": list("héllo".encode()), "type": 1}
    assert r.results[2] == {"types": [0, 1, 2, 9, 10, 8, 256, 257, 258], "codes": [1000, 1002, 1009]}


def test_a_plain_download_does_not_load_the_websocket_module(mpy, fault):
    r = mpy.run("""
import sys
from mpos import DownloadManager
data = DownloadManager.download_url(URL)
result(size=len(data), loaded=[m for m in sys.modules if "websocket" in m])
""", URL=fault.url("/bytes/1000"))
    assert r.value == {"size": 1000, "loaded": []}


def test_header_injection_and_bad_subprotocols_are_refused_before_connecting(mpy, ws_aiohttp):
    r = mpy.run("""
import asyncio

async def main():
    async with ws_session() as session:
        fds = fd_count()
        for kw in ({"headers": {"X-A": "1\\r\\nX-Injected: 1"}}, {"origin": "https://a\\r\\nX: 1"},
                   {"protocols": ("chat, superchat",)}, {"protocols": ("chat\\r\\n",)}):
            try:
                await session.ws_connect(URL, **kw)
                result(refused=None)
            except ValueError as e:
                result(refused=type(e).__name__, fds=fd_count() - fds)
run(main())
""", URL=ws_aiohttp.url("/echo"))
    assert r.results == [{"refused": "ValueError", "fds": 0}] * 4


def test_a_message_of_several_blocks_is_not_held_back_for_acks(mpy, ws_aiohttp):
    # A 4 KB message goes out in four 1 KB writes; with Nagle's algorithm on, each round trip waited about 40 ms
    # for the server's delayed ACK (23 round trips a second on loopback, over 5000 without)
    r = mpy.run("""
import asyncio, time

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            data = bytes(4096)
            t0 = time.ticks_ms()
            for i in range(50):
                await ws.send_bytes(data)
                await ws.receive()
            result(ms=time.ticks_diff(time.ticks_ms(), t0))
run(main())
""", URL=ws_aiohttp.url("/echo"))
    assert r.value["ms"] < 1000


def test_wss_is_verified_against_the_ca_the_session_trusts(mpy, ws_aiohttp_tls, certs):
    r = mpy.run("""
import asyncio, aiohttp

async def main():
    for ca in (CA, OTHER):
        async with aiohttp.ClientSession(ssl=aiohttp.tls_context(ca)) as session:
            fds = fd_count()
            try:
                async with session.ws_connect(URL) as ws:
                    await ws.send_str("trusted")
                    result(echo=await ws.receive_str())
            except aiohttp.ClientConnectionError as e:
                result(refused="TLS" in str(e), fds=fd_count() - fds)
run(main())
""", CA=certs.ca_der_path, OTHER=certs.other_ca_der_path, URL=ws_aiohttp_tls.url("/echo"))
    assert r.results == [{"echo": "trusted"}, {"refused": True, "fds": 0}]


def test_without_os_urandom_keys_come_from_random_and_still_differ(mpy, ws_aiohttp):
    # (MicroPython's webassembly port has no os.urandom)
    r = mpy.run("""
import asyncio, json
import aiohttp.websocket

aiohttp.websocket._urandom = None

async def main():
    async with ws_session() as session:
        keys = []
        for i in range(3):
            async with session.ws_connect(URL) as ws:
                keys += [v for k, v in json.loads(await ws.receive_str()) if k.lower() == "sec-websocket-key"]
                await ws.send_bytes(bytes(3000))
                result(echo=len(await ws.receive_bytes()))
        result(keys=len(set(keys)))
run(main())
""", URL=ws_aiohttp.url("/headers"))
    assert r.results == [{"echo": 3000}] * 3 + [{"keys": 3}]


def test_the_message_buffer_is_made_once_and_reused(mpy, ws_aiohttp):
    # Each 8 KB message needs only its own bytes object once the buffer is there (not a buffer and a copy)
    r = mpy.run("""
import asyncio, gc

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            data = bytes(8192)
            spent = []
            for i in range(6):
                await ws.send_bytes(data)
                await asyncio.sleep_ms(20)  # the echo is all in the socket
                gc.collect()
                gc.disable()
                a0 = gc.mem_alloc()
                msg = await ws.receive()
                spent.append(gc.mem_alloc() - a0)
                gc.enable()
                assert msg.data == data
            result(first=spent[0], later=max(spent[1:]))
run(main())
""", URL=ws_aiohttp.url("/echo"))
    assert r.value["first"] > 16384 and r.value["later"] < 8192 + 4096, r.value


def test_a_big_messages_buffer_goes_with_it(mpy, ws_aiohttp):
    # A rare 256 KB message needs a buffer as big for itself only: the websocket does not hold it for its life
    # (an ESP32's relays stay open for hours), while a buffer for messages of a few KB is kept (above)
    r = mpy.run("""
import asyncio, gc

async def main():
    async with ws_session() as session:
        async with session.ws_connect(URL) as ws:
            small, big = bytes(8192), bytes(range(256)) * 1024
            await ws.send_bytes(small)
            assert (await ws.receive()).data == small
            gc.collect()
            before = gc.mem_alloc()
            await ws.send_bytes(big)
            msg = await ws.receive()
            same = msg.data == big
            msg = None
            await ws.send_bytes(small)  # (the next message: what the last receive left in its frame goes too)
            assert (await ws.receive()).data == small
            gc.collect()
            result(same=same, held=gc.mem_alloc() - before)
run(main())
""", heapsize="4M", URL=ws_aiohttp.url("/echo"))
    assert r.value["same"] and r.value["held"] < 4096, r.value
