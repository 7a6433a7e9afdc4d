"""The websocket test servers themselves (CPython only, no MicroPython): checked with the websockets package's
client, so a mistake shared by a server and our client can't pass unseen."""
import asyncio

from websockets.asyncio.client import connect

from tools.wsservers import frame, unmask


def talk(url, certs, steps):
    # steps(ws) on a websockets-client connection to url (TLS trusting the test CA for wss://)
    async def go():
        async with connect(url, ssl=certs.client_ctx() if url.startswith("wss") else None) as ws:
            return await steps(ws)
    return asyncio.run(go())


def test_the_servers_echo_text_and_binary_and_note_the_close_code(ws_server, certs):
    async def steps(ws):
        await ws.send("héllo")
        await ws.send(b"\x00\xff" * 40000)
        got = [await ws.recv(), await ws.recv()]
        await ws.close(4005)
        return got

    assert talk(ws_server.url("/echo?cpython"), certs, steps) == ["héllo", b"\x00\xff" * 40000]
    assert ws_server.close_codes("/echo?cpython") == [4005]


def test_the_servers_close_with_the_code_asked_for(ws_server, certs):
    async def steps(ws):
        await ws.wait_closed()
        return ws.close_code, ws.close_reason

    assert talk(ws_server.url("/close/4003"), certs, steps) == (4003, "bye")


def test_the_scripted_server_sends_its_frames_and_records_the_clients(ws_script, certs):
    srv = ws_script({"/s": [frame(1, b"one"), frame(2, b"two", fin=False) + frame(0, b"!"), "read"]})

    async def steps(ws):
        got = [await ws.recv(), await ws.recv()]
        await ws.send("three")
        await ws.close(4004)
        return got

    assert talk(srv.url("/s"), certs, steps) == ["one", b"two!"]
    assert [(op, payload) for _, op, payload in srv.frames] == [(1, b"three"), (8, b"\x0f\xa4")]


def test_frames_and_masks_round_trip():
    masked = frame(2, b"payload", mask=b"\x01\x02\x03\x04")
    assert masked[1] == 0x80 | 7 and unmask(masked[6:], masked[2:6]) == b"payload"
    assert frame(1, length=70000)[:4] == bytes([0x81, 127, 0, 0])  # a 64-bit length, announced only
