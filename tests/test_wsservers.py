"""The websocket test servers themselves (CPython only, no MicroPython): checked with the websockets package's
client, so a mistake shared by a server and our client can't pass unseen."""
import asyncio
import socket
import ssl
import time

import pytest

from websockets.asyncio.client import connect

from tools.wsservers import HOST, frame, unmask


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


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_the_scripted_server_sends_its_frames_and_records_the_clients(ws_script, certs, tls):
    srv = ws_script({"/s": [frame(1, b"one"), frame(2, b"two", fin=False) + frame(0, b"!"), "read"]},
                    certs=certs if tls else None)
    assert srv.url("/s").startswith("wss://" if tls else "ws://")

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


def test_the_scripted_servers_fin_over_tls_ends_its_sending_side_and_it_reads_on(ws_script, certs):
    # "fin" over TLS: a TCP FIN without a close_notify (what a truncation looks like); the client's frames are still
    # read (a raw TLS socket: the websockets client gives up on the connection at its end)
    srv = ws_script({"/f": [frame(1, b"last"), "fin", "read"]}, certs=certs)
    with socket.create_connection((HOST, srv.port), timeout=5) as raw:
        with certs.client_ctx().wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False) as conn:
            conn.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            got = b""
            while not got.endswith(frame(1, b"last")):
                part = conn.recv(4096)
                assert part, got
                got += part
            conn.sendall(frame(1, b"after", mask=b"abcd"))  # (CPython's TLS socket sends nothing after its EOF)
            with pytest.raises(ssl.SSLEOFError):  # the TCP end without a close_notify
                conn.recv(4096)
            for _ in range(500):
                if srv.frames:
                    break
                time.sleep(0.01)
    assert got.startswith(b"HTTP/1.1 101") and got.endswith(b"\r\n\r\n" + frame(1, b"last"))
    assert [(op, payload) for _, op, payload in srv.frames] == [(1, b"after")]
