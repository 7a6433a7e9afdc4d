"""WebSocket test servers for the websocket client's tests and benchmark (CPython only).

AiohttpWSServer: aiohttp.web's websocket handler. WebsocketsServer: the `websockets` package's server. Both
serve the same paths, plain or TLS (the suite's `certs`), and note the close code each client left with, by
path and query (a test adds a query of its own to find its connections):
  /echo               every message back as it came (subprotocols "chat" and "superchat" on offer)
  /headers            the request's header fields as one JSON text message, then echo
  /close/CODE         a Close with CODE and the reason "bye" right after the handshake
  /ping               pings the client with b"are you there" and says "pong: <payload>" when the pong comes
  /fragments/N        (websockets) a text message sent as N fragments, a binary one likewise, then echo
  /status/CODE        no websocket: a plain HTTP answer with that status (/status/302 redirects to /echo)
  /drop               the TCP connection ends right after the handshake, with no Close frame

ScriptWSServer: a hand-written server that does the handshake (or a bad one) and then sends bytes by script, for
what no well-behaved server sends: bad frames of every kind, a connection cut inside a frame. It decodes what
the client sends (unmasking it) and records it.
"""

import asyncio
import base64
import hashlib
import json
import socket
import struct
import threading
import time

import websockets
from aiohttp import WSMsgType, web
from websockets.asyncio.server import serve

from tools.testservers import HOST, ScriptServer, _LoopThread

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("chat", "superchat")


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_answer(key):
    """The proper answer to a handshake with Sec-WebSocket-Key key."""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key)).encode()


class _WSBase(_LoopThread):
    ca = None  # the path of the CA that signed the certificate, set by the test fixtures

    def __init__(self, certs=None):
        super().__init__(certs)
        self.closes = []  # (path, the client's close code) per connection, in the order they ended

    @property
    def base(self):
        return "%s://%s:%d" % ("wss" if self.certs else "ws", HOST, self.port)

    def close_codes(self, path, count=1, timeout=5):
        # the close codes of the connections to path (and query), once count of them have ended (the server notes
        # each a moment after its client is gone)
        end = time.monotonic() + timeout
        while time.monotonic() < end and sum(p == path for p, _ in self.closes) < count:
            time.sleep(0.01)
        return [code for p, code in self.closes if p == path]


class AiohttpWSServer(_WSBase):
    async def _astart(self):
        app = web.Application()
        app.router.add_get("/echo", self._echo)
        app.router.add_get("/headers", self._echo)
        app.router.add_get("/close/{code:\\d+}", self._close)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/status/{code:\\d+}", self._status)
        app.router.add_get("/drop", self._drop)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self._runner.server, HOST, 0, ssl=self._ssl())
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _astop(self):
        self._listener.close()
        await self._runner.cleanup()

    async def _open(self, request, **kw):
        ws = web.WebSocketResponse(max_msg_size=0, **kw)  # 0: no limit (the tests send 1 MB messages)
        await ws.prepare(request)
        return ws

    async def _echo(self, request):
        ws = await self._open(request, protocols=PROTOCOLS)
        if request.path == "/headers":  # (the path without the query)
            await ws.send_str(json.dumps([[k.decode(), v.decode()] for k, v in request.raw_headers]))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.closes.append((request.path_qs, ws.close_code))
        return ws

    async def _close(self, request):
        ws = await self._open(request)
        await ws.close(code=int(request.match_info["code"]), message=b"bye")
        self.closes.append((request.path_qs, ws.close_code))
        return ws

    async def _ping(self, request):
        ws = await self._open(request, autoping=False)
        await ws.ping(b"are you there")
        async for msg in ws:
            if msg.type == WSMsgType.PONG:
                await ws.send_str("pong: " + msg.data.decode())
        self.closes.append((request.path_qs, ws.close_code))
        return ws

    async def _status(self, request):
        code = int(request.match_info["code"])
        if code == 302:
            raise web.HTTPFound("/echo")
        return web.Response(status=code, text="no websocket here")

    async def _drop(self, request):
        ws = await self._open(request)
        request.transport.abort()
        return ws


class WebsocketsServer(_WSBase):
    async def _astart(self):
        self._server = await serve(self._handler, HOST, 0, ssl=self._ssl(), select_subprotocol=self._choose,
                                   process_request=self._plain_http, max_size=None, compression=None,
                                   ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _astop(self):
        self._server.close()
        await self._server.wait_closed()

    @staticmethod
    def _choose(connection, offered):
        # the first offered that we speak; none offered (or none we speak) is fine, as with aiohttp.web
        return next((p for p in offered if p in PROTOCOLS), None)

    def _plain_http(self, connection, request):
        # /status/CODE: an HTTP answer instead of the upgrade (websockets then closes the connection)
        if not request.path.startswith("/status/"):
            return None
        code = int(request.path.split("/")[2])
        response = connection.respond(code, "no websocket here")
        if code == 302:
            response.headers["Location"] = "/echo"
        return response

    async def _handler(self, ws):
        path = ws.request.path.split("?")[0]
        try:
            if path == "/headers":
                await ws.send(json.dumps([list(kv) for kv in ws.request.headers.raw_items()]))
            if path.startswith("/close/"):
                await ws.close(int(path.split("/")[2]), "bye")
            elif path == "/ping":
                pong = await ws.ping(b"are you there")
                await pong
                await ws.send("pong: are you there")
            elif path.startswith("/fragments/"):
                n = int(path.split("/")[2])
                await ws.send(["part %d;" % i for i in range(n)])
                await ws.send([bytes([i]) * 100 for i in range(n)])
            elif path == "/drop":
                ws.transport.abort()
                return
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closes.append((ws.request.path, ws.close_code))


# ---------------------------------------------------------------- the scripted server

def frame(op, payload=b"", fin=True, rsv=0, mask=None, length=None):
    """A frame as a server would send it (mask=4 bytes makes it a masked one, which no server may send); length
    overrides the announced payload length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv << 4 | op
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack(">BB", b0, m | n)
    elif n < 65536:
        head = struct.pack(">BBH", b0, m | 126, n)
    else:
        head = struct.pack(">BBQ", b0, m | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def close_frame(code, reason=b""):
    return frame(8, struct.pack(">H", code) + reason)


class ScriptWSServer(ScriptServer):
    """Answers each connection's handshake, then runs the script of its path: bytes are sent, a number is a pause in
    seconds, a threading.Event is waited for (the test sets it), "read" waits for one frame from the client, "echo"
    sends that frame back, "fin" ends the sending side (a clean TCP close), "drop" ends the connection at once (RST).
    After the script it reads what the client still sends up to its Close, answers that with its code, then closes.

    answers[path](key), where given, is the head to send instead of a proper 101. `frames` records every frame the
    client sent as (connection number, opcode, payload); `heads` each request head. rcvbuf: the size of each
    connection's receive buffer (small, a client's sends soon wait). certs: wss://, each bytes step one or more TLS
    records (a step over 16 KB is split), "fin" a TCP FIN without a close_notify, as a truncation looks.
    """

    def __init__(self, scripts, answers=None, rcvbuf=None, certs=None):
        self.answers = answers or {}
        self.frames = []
        self.heads = []
        super().__init__(scripts, certs)
        if rcvbuf:  # on the listening socket: accepted ones inherit it, window scaling included
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def url(self, path):
        return "%s://%s:%d%s" % ("wss" if self._tls else "ws", HOST, self.port, path)

    def client_close_codes(self, timeout=5):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not any(op == 8 for _, op, _ in self.frames):
            time.sleep(0.01)
        return [struct.unpack(">H", p[:2])[0] if p else None for _, op, p in self.frames if op == 8]

    def _answer(self, conn, number):
        conn.settimeout(10)
        try:
            if self._tls:
                conn = self._tls.wrap_socket(conn, server_side=True)
            reader = _Frames(conn)
            head = reader.until(b"\r\n\r\n").decode("latin-1")
            self.heads.append(head)
            path = head.split(" ")[1]
            key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            conn.sendall(self.answers.get(path, handshake_answer)(key))
            for step in self.scripts.get(path, ()):
                if step == "drop":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if step == "fin":  # (socket's own: an SSLSocket's shutdown() would read the rest unencrypted)
                    socket.socket.shutdown(conn, socket.SHUT_WR)
                elif step in ("read", "echo"):
                    last = reader.next()
                    self.frames.append((number,) + last)
                    if step == "echo":
                        conn.sendall(frame(last[0], last[1]))
                elif isinstance(step, bytes):
                    conn.sendall(step)
                elif isinstance(step, threading.Event):
                    step.wait(10)
                else:
                    time.sleep(step)
            while True:  # what the client still sends, up to its Close, which is answered
                got = reader.next()
                self.frames.append((number,) + got)
                if got[0] == 8:
                    conn.sendall(frame(8, got[1][:2]))
                    break
        except (OSError, EOFError, StopIteration):
            pass
        finally:
            conn.close()


class _Frames:
    # Reads a client's frames (masked, as a client must send them) from a blocking socket
    def __init__(self, conn):
        self.conn = conn
        self.data = bytearray()

    def _more(self):
        part = self.conn.recv(1 << 20)
        if not part:
            raise EOFError
        self.data += part

    def take(self, n):
        while len(self.data) < n:
            self._more()
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    def until(self, end):
        while end not in self.data:
            self._more()
        return self.take(self.data.index(end) + len(end))

    def next(self):
        """-> (opcode, unmasked payload) of the client's next frame"""
        b0, b1 = self.take(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.take(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.take(8))[0]
        if not b1 & 0x80:
            raise ValueError("unmasked frame from the client")
        mask = self.take(4)
        payload = self.take(n)
        return b0 & 0x0F, unmask(payload, mask)


def unmask(payload, mask):
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
