# WebSockets for our aiohttp (RFC 6455, client side): session.ws_connect(url) -> ClientWebSocketResponse.
#
# Loaded on first use (ClientSession.ws_connect and aiohttp's lazy __getattr__), so a plain download never pays
# for it. Each websocket owns one connection, never taken from or given back to the session's HTTP pool; the
# session closes the ones still open when it closes (ClientSession.shutdown -> _going_away).
#
# Reading: frames are parsed from the connection's read-ahead (conn.buf[conn.pos:conn.filled]). A message that is
# all there becomes its str or bytes straight from it; a longer one goes into the websocket's message buffer, which
# grows with the messages and is reused up to _KEEP bytes. The reader's state lives on the object (_left, _got,
# _op) and its only waits are for the socket, so a receive() cancelled at any point (a timeout) loses no byte: the
# next one goes on.
# Writing: one frame at a time (a Lock), masked with a fresh key per frame, in blocks XORed as big integers. The
# socket may take frame after frame without a wait: the bytes go on the connection's streak, as reads do, and after
# FAIR_SHARE other tasks get a turn.

import asyncio
import binascii
import errno
import struct
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

# What this module takes from the HTTP client. From the session: closed, _headers, _timeout, _tls_context(ssl),
# _make_room, _freed_memory, _done_with and _websockets (its open websockets); from the connection: open, send, recv,
# fill, handed_out, close and its read-ahead buf[pos:filled].
from . import poll
from .client import _RequestContext, _connect_end, check_headers, ms
from .connection import Connection, resolve
from .errors import (ClientConnectionError, ClientConnectorError, ClientError, ClientResponseError,
                     ConnectionTimeoutError, ServerDisconnectedError, ServerTimeoutError, SocketTimeoutError,
                     raise_if_retyped)
from .response import read_head
from .url import host_port, split_url

try:
    from os import urandom as _urandom
except ImportError:  # (MicroPython's webassembly port)
    _urandom = None

_OPEN = const(0)
_PEER_CLOSED = const(1)  # the server's Close came; ours is not sent yet (autoclose=False)
_CLOSING = const(2)  # ours is sent, or on its way
_CLOSED = const(3)  # the connection is gone

_OP_CONTINUATION = const(0)
_OP_TEXT = const(1)
_OP_BINARY = const(2)
_OP_CLOSE = const(8)
_OP_PING = const(9)
_OP_PONG = const(10)
_FIN = const(0x80)

_BLOCK = const(1024)  # bytes masked at a time: a large frame is never copied whole
_FAIR_SHARE = const(65536)  # connection.FAIR_SHARE (a const is inlined only in its own module)
_DISCARD = const(256)  # bytes per read while a failed connection's last bytes are let go of
_KEEP = const(16384)  # a message buffer up to this size is kept for the next message, a bigger one goes with its own
_NO_LIMIT = 1 << 63  # max_msg_size=0 (aiohttp's "no limit"): no frame can announce more (see _head)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class WSMsgType:
    # aiohttp's message types (an IntEnum there): the opcodes, and three of aiohttp's own
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    PING = 9
    PONG = 10
    CLOSE = 8
    CLOSING = 256
    CLOSED = 257
    ERROR = 258


class WSCloseCode:
    OK = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL_CLOSURE = 1006
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


class WSMessage:
    # .type: a WSMsgType; .data: str (TEXT), bytes (BINARY, PING, PONG), the close code (CLOSE), the exception
    # (ERROR); .extra: the close reason (CLOSE), None for CLOSING, CLOSED and ERROR, else "" (as aiohttp's)
    extra = ""

    def __init__(self, type, data, extra=""):
        self.type = type
        self.data = data
        if extra != "":
            self.extra = extra

    def json(self, *, loads=None):
        import json

        return (loads or json.loads)(self.data)

    def __repr__(self):
        return "<WSMessage type=%d data=%r extra=%r>" % (self.type, self.data, self.extra)


_CLOSED_MESSAGE = WSMessage(WSMsgType.CLOSED, None, None)
_CLOSING_MESSAGE = WSMessage(WSMsgType.CLOSING, None, None)


class WebSocketError(Exception):
    # What the server sent breaks RFC 6455: .code is the close code the connection was failed with
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class WSServerHandshakeError(ClientResponseError):
    pass


class WSMessageTypeError(TypeError):
    pass


class ClientConnectionResetError(ClientConnectionError):
    pass


class ClientWSTimeout:
    # ws_receive: seconds each receive() may wait (None: no limit); ws_close: seconds close() waits for our Close
    # to go out, and as long again for the server's
    def __init__(self, ws_receive=None, ws_close=10.0):
        self.ws_receive = ws_receive
        self.ws_close = ws_close


_seeded = False


def _random(n):
    # n random bytes (n a multiple of 4) for keys and masks: the port's source (a hardware RNG on an ESP32),
    # else `random`, seeded here from the clock once: some ports start it from a fixed seed
    global _seeded
    if _urandom is not None:
        return _urandom(n)
    import random
    from time import ticks_us

    if not _seeded:
        random.seed(ticks_us())
        _seeded = True
    return b"".join(random.getrandbits(32).to_bytes(4, "little") for i in range(n // 4))


def _mask(data, key, block_key=0):
    # data (at most _BLOCK bytes, from an offset that is a multiple of 4) XOR the 4-byte key repeated: one XOR of
    # two integers, a loop in C instead of a Python loop per byte. block_key: the key over a whole block as an
    # int, made once per frame.
    n = len(data)
    if n == _BLOCK and block_key:
        k = block_key
    else:
        k = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")


def _frame(op, key, first, n):
    # A client frame's header for a payload of n bytes, its mask key, and the first block of it masked: a short
    # message is one write, so one TCP segment and one TLS record
    if n < 126:
        head = bytes((_FIN | op, 0x80 | n))
    elif n < 65536:
        head = struct.pack(">BBH", _FIN | op, 0xFE, n)
    else:
        head = struct.pack(">BBQ", _FIN | op, 0xFF, n)
    return b"".join((head, key, _mask(first, key)))


def _text(data):
    # data as a str, or WebSocketError 1007. What MicroPython's decoder lets through and UTF-8 has not is looked for
    # in text that is not plain ASCII (where the length in characters differs from the length in bytes).
    try:
        s = str(data, "utf-8")
    except UnicodeError:
        s = None
    if s is not None and len(s) != len(data):
        from . import utf8

        if utf8.lax(s.encode()):
            s = None
    if s is None:
        raise WebSocketError(WSCloseCode.INVALID_TEXT, "text is not valid UTF-8")
    return s


def _close_payload(payload):
    # A Close frame's payload -> (code, reason); 1005, "no status", when it has none (RFC 6455 section 7.1.5)
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = payload[0] << 8 | payload[1]
    if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999):
        raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "invalid close code %d" % code)
    return code, _text(memoryview(payload)[2:])


def _wake(task):
    # A task parked on this websocket's socket gets CancelledError, which it recognises by its slot being empty and
    # (with asyncio's internals) by _woken: another task's cancel before or after this one wins (poll.interrupt)
    if task is not None and task is not poll.current_task():
        poll.interrupt(task, asyncio.CancelledError(None, _wake))


def _woken(e, by=_wake):
    # Whether a CancelledError is by's (_wake's, _alarm's) rather than another task's (without asyncio's internals:
    # assumed). by is its second argument: asyncio.wait_for, which the task may be in, reads a first one as its own.
    return not poll.internals or len(e.args) > 1 and e.args[1] is by


async def _alarm(task, end):
    # receive()'s timeout, at the ticks_ms end: it stops the reading task only where that waits, so a message read as
    # the time runs out is returned (asyncio.wait_for drops a result that comes then)
    try:
        await asyncio.sleep_ms(ticks_diff(end, ticks_ms()))
    except asyncio.CancelledError:
        raise  # (receive() ended first)
    except BaseException:  # an interrupt (Ctrl-C) as the time ran out: the timeout holds all the same
        poll.interrupt(task, asyncio.CancelledError(None, _alarm))
        raise
    poll.interrupt(task, asyncio.CancelledError(None, _alarm))


class ClientWebSocketResponse:
    # Defaults on the class; an instance sets only what it uses (MicroPython has no __slots__: each attribute set
    # is a slot in the instance's own table). An idle websocket that only saw short messages holds 5 of them.
    protocol = None  # the subprotocol the server chose
    close_code = None
    _exc = None
    _state = _OPEN
    _reading = None  # the task parked reading this socket (receive(), or close() waiting for the server's Close)
    _writing = None  # the task writing a frame (it holds _lock)
    _unsendable = False  # a send failed while a receive() waited: it reads on, and nothing more is sent
    _beat = None  # the heartbeat task
    _heard = 0  # ticks_ms of the last frame header or payload bytes read (kept for the heartbeat only)
    _buf = None  # the message buffer, for messages the read-ahead can't hold whole
    _left = 0  # payload bytes of the current frame still to read
    _got = 0  # bytes of the current message in _buf
    _op = 0  # the current message's opcode, with _FIN when its current frame is the last
    _max = 4 * 1024 * 1024
    _autoclose = True
    _autoping = True
    _decode = True
    _close_timeout = 10.0
    _receive_timeout = None

    def __init__(self, session, conn):
        self._session = session
        self._conn = conn
        self._lock = asyncio.Lock()

    @property
    def closed(self):
        return self._state >= _CLOSING

    @property
    def ws(self):
        # MicroPythonOS's uaiowebsocket reads ws.ws.closed (its bundled client kept a protocol object there)
        return self

    def exception(self):
        return self._exc

    # --- sending ------------------------------------------------------------------------------------------
    async def send_str(self, data, compress=None):
        if not isinstance(data, str):
            raise TypeError("data argument must be str (%r)" % type(data))
        await self._send(_OP_TEXT, data.encode())

    async def send_bytes(self, data, compress=None):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data argument must be byte-ish (%r)" % type(data))
        await self._send(_OP_BINARY, data)

    async def send_json(self, data, compress=None, *, dumps=None):
        import json

        await self.send_str((dumps or json.dumps)(data))

    async def send_frame(self, message, opcode, compress=None):
        await self._send(opcode, message)

    async def ping(self, message=b""):
        await self._send(_OP_PING, _control_payload(message))

    async def pong(self, message=b""):
        await self._send(_OP_PONG, _control_payload(message))

    async def _send(self, op, data):
        # One whole frame, after the one another task may be writing. Cancelled half-way (from outside), the
        # connection is dropped: the server could never tell where the next frame starts.
        n = len(data)
        key = _random(4)
        conn = self._conn
        if conn.streak >= _FAIR_SHARE:  # the socket may take frame after frame without a wait: others get a turn
            await conn.take_turn()  # (before the lock: a cancel here costs no frame)
        await self._lock.acquire()
        try:
            if conn.sock is None or self._unsendable or self._state >= _CLOSING and op != _OP_CLOSE:
                raise ClientConnectionResetError("Cannot write to closing transport")
            self._writing = poll.current_task()
            mv = memoryview(data)
            piece = _frame(op, key, mv[:_BLOCK], n)
            conn.streak += len(piece)
            await conn.send(piece)
            if n > _BLOCK:
                block_key = int.from_bytes(key * (_BLOCK // 4), "little")
                for off in range(_BLOCK, n, _BLOCK):
                    if conn.streak >= _FAIR_SHARE:  # (a long frame, likewise)
                        await conn.take_turn()
                    piece = _mask(mv[off : off + _BLOCK], key, block_key)
                    conn.streak += len(piece)
                    await conn.send(piece)
        except asyncio.CancelledError as e:
            if self._writing is not poll.current_task() and _woken(e):  # woken by _drop: the connection went
                raise ClientConnectionResetError("websocket closed while sending")
            self._drop()
            raise
        except OSError as e:
            e = ClientConnectionResetError("websocket: %s" % e, e.errno)  # (what a reader woken by _drop returns)
            if self._reading is None or self._state != _OPEN:
                self._drop(e)
            else:  # the waiting reader reads on to what the server sent before it reset (its Close) and to the end
                self._unsendable = True
                if self._exc is None:
                    self._exc = e
            raise e
        except Exception:
            raise
        except BaseException:  # an interrupt (Ctrl-C) or a close of this coroutine: the frame may be cut, as above
            self._drop()
            raise
        finally:
            if self._writing is poll.current_task():
                self._writing = None
            self._lock.release()

    async def _reply(self, op, payload):
        # A pong or a Close sent by the reading task: close() must not wake it meanwhile (it would cut the frame)
        me = self._reading
        self._reading = None
        try:
            await self._send(op, payload)
        except ClientConnectionResetError:
            # Not for the caller: a close() started meanwhile (its Close goes out instead), the server's Close is
            # answered or not (the connection went meanwhile), or a send failed and nothing more can go
            if self._state != _CLOSING and op != _OP_CLOSE and not self._unsendable:
                raise
        except asyncio.CancelledError:  # from outside: _receive re-raises it, as it finds itself still the reader
            if op == _OP_CLOSE:
                self._drop()  # the Close the server waits for will not go; nothing else may be sent
            self._reading = me
            raise
        if self._reading is None:
            self._reading = me

    # --- receiving ----------------------------------------------------------------------------------------
    async def receive(self, timeout=None):
        st = self._state
        if st == _CLOSED:
            return _CLOSED_MESSAGE
        if st == _CLOSING:
            return _CLOSING_MESSAGE
        if st == _PEER_CLOSED:
            await self.close()
            return _CLOSED_MESSAGE
        if self._reading is not None:
            raise RuntimeError("Concurrent call to receive() is not allowed")
        timeout = timeout or self._receive_timeout
        if not timeout:
            return await self._receive()
        alarm = asyncio.create_task(_alarm(poll.current_task(), ticks_add(ticks_ms(), ms(timeout))))
        try:
            return await self._receive()
        except asyncio.CancelledError as e:
            if _woken(e, _alarm) and (poll.internals or alarm.done()):  # (not done: an interrupt as it rang)
                raise asyncio.TimeoutError
            raise
        finally:
            alarm.cancel()

    async def receive_str(self, *, timeout=None):
        return (await self._receive_type(WSMsgType.TEXT, timeout)).data

    async def receive_bytes(self, *, timeout=None):
        return (await self._receive_type(WSMsgType.BINARY, timeout)).data

    async def receive_json(self, *, loads=None, timeout=None):
        return (await self._receive_type(WSMsgType.TEXT, timeout)).json(loads=loads)

    async def _receive_type(self, want, timeout):
        msg = await self.receive(timeout)
        if msg.type != want:
            raise WSMessageTypeError("Received message %d:%r is not of type %d" % (msg.type, msg.data, want))
        return msg

    def __aiter__(self):
        return self

    async def __anext__(self):
        msg = await self.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return msg

    async def _receive(self):
        # receive() without its timeout: the next message, or what ended the connection as a message
        me = self._reading = poll.current_task()
        try:
            msg = await self._next()
        except asyncio.CancelledError as e:
            if self._reading is me or not _woken(e):  # cancelled from outside (a timeout): nothing lost, the next
                self._reading = None  # call goes on
                poll.wake_writer(self._writing, self._conn.sock)
                raise
            # woken by close() (a CLOSING message: its own receive takes the server's Close) or by _drop
            if self._state != _CLOSED:
                return _CLOSING_MESSAGE
            return WSMessage(WSMsgType.ERROR, self._exc, None) if self._exc is not None else _CLOSED_MESSAGE
        except WebSocketError as e:
            self._reading = None
            return await self._fail(e)
        except (OSError, ClientError) as e:
            if isinstance(e, OSError):
                e = ClientConnectionError("websocket: %s" % e, e.errno)
            self._drop(e)
            return WSMessage(WSMsgType.ERROR, e, None)
        except MemoryError:
            if self._conn.sock is None:  # a read that ran out of heap closed it (Connection._read_once): bytes are lost
                self._drop()
            raise
        except Exception:
            raise
        except BaseException:
            # An interrupt (Ctrl-C) or a close of this coroutine, which may have come between a socket read and its
            # bookkeeping: where the next frame starts is lost, and the connection goes
            self._drop()
            raise
        if self._reading is me:
            self._reading = None
        return msg

    def _head(self):
        # The frame at the front of the read-ahead: (opcode, FIN bit, header size, payload length), or None while
        # its header (and, for a control frame, its payload) is not all here. Raises WebSocketError for what no
        # server may send.
        conn = self._conn
        buf = conn.buf
        p = conn.pos
        have = conn.filled - p
        if buf is None or have < 2:
            return None
        b0 = buf[p]
        n = buf[p + 1]
        size = 2 if n & 0x7F < 126 else 4 if n & 0x7F == 126 else 10
        if have < size:
            return None
        if n & 0x80:
            raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "masked frame from the server")
        if b0 & 0x70:
            raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        op = b0 & 0x0F
        if size == 2:
            n &= 0x7F
        else:
            n = int.from_bytes(buf[p + 2 : p + size], "big")
            if n >> 63:
                raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "frame length over 2**63")
        if op >= _OP_CLOSE:
            if op > _OP_PONG:
                raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "unknown opcode %d" % op)
            if not b0 & _FIN or n > 125:
                raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
            if have < size + n:
                return None
        elif op > _OP_BINARY:
            raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "unknown opcode %d" % op)
        elif op == _OP_CONTINUATION and not self._op:
            raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "continuation frame with no message to continue")
        elif op != _OP_CONTINUATION and self._op:
            raise WebSocketError(WSCloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        return op, b0 & _FIN, size, n

    async def _next(self):
        # The next message, from where the last call stopped; pings and pongs are taken care of on the way
        conn = self._conn
        while True:
            if not self._left:
                head = self._head()
                if head is None:
                    if not await conn.fill():
                        return self._ended()
                    continue
                op, fin, size, n = head
                if self._beat is not None:
                    self._heard = ticks_ms()
                p = conn.pos + size
                if op >= _OP_CLOSE:
                    payload = bytes(memoryview(conn.buf)[p : p + n])
                    conn.handed_out(size + n)
                    msg = await self._control(op, payload)
                    if msg is not None:
                        return msg
                    continue
                if self._got + n > self._max:  # refused before a byte of it is read
                    raise WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "message over max_msg_size (%d)" % self._max)
                if fin and not self._op and n <= conn.filled - p:  # a whole message in the read-ahead
                    msg = self._message(op, memoryview(conn.buf)[p : p + n])
                    conn.handed_out(size + n)
                    return msg
                conn.handed_out(size)
                self._op = (self._op or op) | fin
                self._left = n
                self._room(self._got + n)
            # the current frame's payload into the message buffer: the read-ahead's part, then from the socket
            if conn.pos < conn.filled:
                k = min(self._left, conn.filled - conn.pos)
                self._buf[self._got : self._got + k] = memoryview(conn.buf)[conn.pos : conn.pos + k]
                conn.handed_out(k)
                self._got += k
                self._left -= k
            while self._left:
                k = await conn.recv(memoryview(self._buf)[self._got : self._got + self._left])
                if not k:
                    return self._ended()
                if self._beat is not None:  # a long message arriving slowly is a live connection
                    self._heard = ticks_ms()
                self._got += k
                self._left -= k
            if self._op & _FIN:
                op, n = self._op & 0x0F, self._got
                self._op = self._got = 0
                msg = self._message(op, memoryview(self._buf)[:n])
                if len(self._buf) > _KEEP:
                    self._buf = None
                return msg

    def _room(self, n):
        # a message buffer of at least n bytes, what it holds kept; doubled while a fragmented message grows
        buf = self._buf
        if buf is not None and len(buf) >= n:
            return
        if self._got:
            n = min(max(n, 2 * len(buf)), self._max)
        try:
            new = bytearray(n)
        except (MemoryError, OverflowError):  # (OverflowError: a length past a 32-bit port's machine word)
            raise WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "no room for a message of %d bytes" % n)
        if self._got:
            new[: self._got] = memoryview(buf)[: self._got]
        self._buf = new

    def _message(self, op, data):
        # The message's str or bytes, made from its buffer: no room for that copy is a message too big, as no room
        # for the buffer is (_room)
        try:
            if op == _OP_BINARY:
                return WSMessage(WSMsgType.BINARY, bytes(data))
            text = _text(data)
            return WSMessage(WSMsgType.TEXT, text if self._decode else bytes(data))
        except MemoryError:
            raise WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "no room for a message of %d bytes" % len(data))

    def _ended(self):
        # The server closed TCP without a Close frame: CLOSED with code 1006 (RFC 6455 section 7.1.5) and, as in
        # aiohttp, exception() a ClientConnectionResetError; cut inside a frame, an error
        conn = self._conn
        if self._left or self._op or conn.pos < conn.filled:
            raise ServerDisconnectedError("connection closed inside a frame")
        self._drop(ClientConnectionResetError("connection lost"))
        return _CLOSED_MESSAGE

    async def _control(self, op, payload):
        # A ping, pong or Close (between messages or inside one) -> a message for the caller, or None to read on
        if op == _OP_PING:
            if not self._autoping:
                return WSMessage(WSMsgType.PING, payload)
            if self._state < _CLOSING:
                await self._reply(_OP_PONG, payload)
            return None if self._state < _CLOSING else _CLOSING_MESSAGE
        if op == _OP_PONG:
            return None if self._autoping else WSMessage(WSMsgType.PONG, payload)
        code, reason = _close_payload(payload)
        self.close_code = code
        if self._state == _OPEN:
            self._state = _PEER_CLOSED
            if self._autoclose:
                self._state = _CLOSING
                self._stop_beat()
                await self._reply(_OP_CLOSE, payload[:2])  # their code back (RFC 6455 section 5.5.1)
                self._drop()
            return WSMessage(WSMsgType.CLOSE, code, reason)
        # close() began: the answer to our Close, or the server's own Close crossing ours while it waits to go out
        # (behind a send). close() ends the connection once its Close is out; a receive() that was waiting when it
        # began (close() wakes it only then) returns CLOSING.
        return _CLOSING_MESSAGE

    async def _fail(self, e):
        # RFC 6455 section 7.1.7: a Close with the code, then the connection goes (the server's Close is not awaited)
        self.close_code = e.code
        self._exc = e
        if self._state == _CLOSING:  # close() is under way: its Close (maybe waiting behind a send) goes first
            return WSMessage(WSMsgType.ERROR, e, None)
        try:
            if self._state < _CLOSING:
                self._state = _CLOSING
                self._stop_beat()
                await poll.bounded(self._close_unheard(e.code), ms(self._close_timeout))
        except Exception:
            pass  # the connection goes anyway
        finally:
            self._drop()
        return WSMessage(WSMsgType.ERROR, e, None)

    async def _close_unheard(self, code):
        # A failure's Close, then what the server still sends is let go of unread until it closes TCP (RFC 6455
        # section 7.1.1): a socket closed with bytes unread resets the connection and throws away what it had not
        # sent yet, our last messages and the Close among them
        await self._send(_OP_CLOSE, struct.pack(">H", code))
        conn = self._conn
        into = conn.buf or self._buf or bytearray(_DISCARD)  # (reused: nothing in either is delivered any more)
        conn.pos = conn.filled = 0
        while await conn.recv(into):
            pass

    # --- closing ------------------------------------------------------------------------------------------
    async def close(self, *, code=WSCloseCode.OK, message=b""):
        """The closing handshake: our Close (code, message), then the server's, each within ws_close seconds. A
        receive() waiting in another task returns a CLOSING message. False if it was closing or closed already."""
        st = self._state
        if st >= _CLOSING:
            return False
        if isinstance(message, str):
            message = message.encode()
        if len(message) > 123:
            raise ValueError("close message longer than 123 bytes")
        self._state = _CLOSING
        self._stop_beat()
        try:
            # bounded too: from a server that stopped reading, the socket may never take our Close
            ours = self._send(_OP_CLOSE, struct.pack(">H", code) + message)
            await poll.bounded(ours, ms(self._close_timeout))
            reader = self._reading
            if reader is not None:
                self._reading = None
                _wake(reader)
            if st == _OPEN:
                await poll.bounded(self._drain(), ms(self._close_timeout))
        except Exception as e:  # (a timeout, the connection gone, a bad frame in what was left)
            if isinstance(e, OSError):  # (as receive() gives it)
                e = ClientConnectionError("websocket: %s" % e, e.errno)
            if self._exc is None:
                self._exc = e
        finally:
            self._drop()
        return True

    async def _drain(self):
        # after our Close: what still comes is read and let go, up to the server's Close (_control takes it)
        me = self._reading = poll.current_task()
        try:
            while self._state == _CLOSING and self.close_code is None:  # (set: the server's Close came)
                await self._next()
        except asyncio.CancelledError as e:
            if self._reading is me or not _woken(e):  # close()'s own timeout, or a cancel of close() itself
                raise
            # (woken by _drop: the connection went, there is nothing left to drain)
        finally:
            if self._reading is me:
                self._reading = None

    def _going_away(self):
        # The session closes (or the task in `async with` was cancelled): a Close (1001, going away) if the socket
        # takes it at once, then the connection goes, with no wait
        s = self._conn.sock
        if self._state < _CLOSING and self._writing is None and s is not None:
            try:
                key = _random(4)
                s.write(_frame(_OP_CLOSE, key, b"\x03\xe9", 2))
            except Exception:
                pass  # best effort: the connection goes anyway
        self._drop()

    def _drop(self, exc=None):
        # The connection goes, now: the end of every path. The tasks parked on its socket are woken first (one
        # left parked on a closed socket would never wake); a receive() woken here returns CLOSED, or ERROR with
        # exc.
        gone = self._state == _CLOSED
        try:  # (what allocates: in a heap that just ran out, the connection goes all the same)
            if exc is not None and self._exc is None:
                self._exc = exc
            if gone:
                return
            self._state = _CLOSED
            if self.close_code is None:
                self.close_code = WSCloseCode.ABNORMAL_CLOSURE
            reader, writer = self._reading, self._writing
            if reader is not None:
                self._reading = None
                _wake(reader)
            if writer is not None:
                self._writing = None
                _wake(writer)
            self._stop_beat()
        finally:
            if not gone:
                self._session._done_with(self._conn, False)  # closed: the requests waiting for a socket try again
                websockets = self._session._websockets
                if self in websockets:  # (no ValueError: made in a full heap, it would replace the MemoryError)
                    websockets.remove(self)
                self._buf = None

    # --- heartbeat ----------------------------------------------------------------------------------------
    def _stop_beat(self):
        beat = self._beat
        if beat is not None:
            self._beat = None
            _wake(beat)

    async def _heartbeat(self, interval_ms):
        # A ping after interval_ms with nothing from the server; nothing within half that after it: the connection
        # is dead.
        # Frames are read by receive(), so a heartbeat needs a receive (async for) running, as aiohttp's pongs do not.
        try:
            while self._state < _CLOSING:
                quiet = ticks_diff(ticks_ms(), self._heard)
                if quiet < interval_ms:
                    await asyncio.sleep_ms(interval_ms - quiet)
                    continue
                sent = ticks_ms()
                await poll.bounded(self._send(_OP_PING, b""), interval_ms // 2)
                await asyncio.sleep_ms(max(0, interval_ms // 2 - ticks_diff(ticks_ms(), sent)))
                if ticks_diff(self._heard, sent) < 0:
                    raise asyncio.TimeoutError
        except asyncio.CancelledError:
            pass  # stopped by close() or _drop
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError):
                e = ServerTimeoutError("No PONG received after %s seconds" % (interval_ms / 2000), errno.ETIMEDOUT)
            self._beat = None
            self._drop(e)
        except BaseException:  # an interrupt (Ctrl-C) that lands here ends this task, not the heartbeat: a new one
            if self._beat is poll.current_task() and self._state < _CLOSING:
                self._beat = asyncio.create_task(self._heartbeat(interval_ms))
            raise


def _control_payload(message):
    if isinstance(message, str):
        message = message.encode()
    if len(message) > 125:
        raise ValueError("a control frame's payload is at most 125 bytes")
    return message


class _WSContext(_RequestContext):
    # `async with session.ws_connect(url) as ws:` closes ws at the end, after an error of the block's too; cancelled
    # or interrupted (Ctrl-C, SystemExit, a closed coroutine's GeneratorExit), it goes at once (no waiting for the
    # server's Close). `await session.ws_connect(url)` gives ws itself.
    def __aexit__(self, exc_type, exc, tb):
        # (no coroutine of its own, nor close()'s when the heap ran out: the websocket goes all the same)
        if exc_type is None or issubclass(exc_type, Exception) and not issubclass(exc_type, MemoryError):
            try:
                return _closed(self._resp)  # (not close()'s True: a true __aexit__ swallows what the block raised)
            except MemoryError as e:
                self._resp._going_away()
                raise_if_retyped(True, e)  # (_going_away may make an exception)
                raise
        self._resp._going_away()
        raise_if_retyped(exc_type is MemoryError, exc)  # (_going_away may make an exception)
        return ()


async def _closed(ws):
    await ws.close()


def ws_connect(session, url, **kw):
    return _WSContext(_connect(session, url, **kw))


async def _within(aw, seconds, what, timeout_error):
    # aw, bounded by seconds (None: unbounded); over time, a timeout_error naming what took so long
    if not seconds:
        return await aw
    try:
        return await poll.bounded(aw, ms(seconds))
    except asyncio.TimeoutError:
        raise timeout_error("websocket handshake: %s took over %s s" % (what, seconds), errno.ETIMEDOUT)


async def _connect(session, url, *, method="GET", protocols=(), timeout=None, receive_timeout=None, autoclose=True,
                   autoping=True, heartbeat=None, origin=None, headers=None, ssl=None, compress=0,
                   max_msg_size=4 * 1024 * 1024, decode_text=True):
    # The opening handshake (RFC 6455 section 4.1) on a connection of the websocket's own. The session's timeout
    # bounds it: `connect` the TCP and TLS setup and the request, `sock_read` the wait for the answer (`total` each
    # where unset); `total` also ends the name's lookup and the wait for a socket, counted from the start.
    if session.closed:
        raise RuntimeError("session is closed")
    if compress:
        raise ValueError("compress: permessage-deflate is not supported")
    if isinstance(url, str) and url[:6].lower().startswith(("ws://", "wss://")):
        url = "http" + url[2:]  # ws and wss are spoken over http and https connections
    scheme, host, port, target = split_url(url)
    fields = dict(session._headers)  # lower-cased name -> (name, value): the call's win over the session's
    check_headers(headers, fields)
    # a subprotocol is a token, as a header name is; the Origin a plain value
    check_headers(dict.fromkeys(protocols, ""), None)
    if origin is not None:
        check_headers({"Origin": origin}, None)
    if not isinstance(method, str) or not method.isalpha():
        raise ValueError("invalid HTTP method %r" % (method,))
    key = binascii.b2a_base64(_random(16), newline=False)
    own_host = fields.pop("host", None)
    for k in ("upgrade", "connection", "origin", "sec-websocket-key", "sec-websocket-version",
              "sec-websocket-protocol", "sec-websocket-extensions"):
        fields.pop(k, None)
    head = ["%s %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            % (method.upper(), target, own_host[1] if own_host else host_port(scheme, host, port), key.decode())]
    if protocols:
        head.append("Sec-WebSocket-Protocol: %s\r\n" % ", ".join(protocols))
    if origin is not None:
        head.append("Origin: %s\r\n" % origin)
    for kv in fields.values():
        head.append("%s: %s\r\n" % kv)
    head.append("\r\n")
    conn = Connection((scheme, host, port, session._tls_context(ssl) if scheme == "https" else None))
    t = session._timeout
    end = ticks_add(ticks_ms(), ms(t.total)) if t.total else None
    try:
        try:
            address = await resolve(host, port, ms(t.connect), end)
            until = _connect_end(t, end)
            head = "".join(head).encode()
            while True:  # no socket or no TLS memory free: the session's oldest idle connection goes first, or a
                # socket waits for one of its requests to end
                opened = False
                try:
                    conn.open(address)
                    opened = True
                    # (a TLS handshake runs in the first send)
                    await _within(conn.send(head), t.connect or t.total, "connecting", ConnectionTimeoutError)
                    break
                except BaseException as e:
                    memory = isinstance(e, MemoryError)  # (read before the close: see raise_if_retyped)
                    conn.close()
                    raise_if_retyped(memory, e)
                    if session._freed_memory(e):
                        continue
                    if opened or not isinstance(e, OSError):
                        raise
                    await session._make_room(e, until, "websocket %s:%d" % (host, port))
            status, answer = await _within(_answer(conn), t.sock_read or t.total, "the answer", SocketTimeoutError)
        except OSError as e:
            raise ClientConnectorError("websocket %s:%d: %s" % (host, port, e), e.errno)
        _check(status, answer, key, protocols)
        if session.closed:  # meanwhile: it would never close this websocket
            raise ClientConnectionError("session closed while connecting to %s" % host)
        conn.handed_out(0)  # (lets go of the read-ahead buffer if the answer left nothing in it)
        ws = ClientWebSocketResponse(session, conn)
        for name, value in (("protocol", answer.get("Sec-WebSocket-Protocol")), ("_max", max_msg_size or _NO_LIMIT),
                            ("_autoclose", autoclose), ("_autoping", autoping), ("_decode", decode_text)):
            if value != getattr(ClientWebSocketResponse, name):
                setattr(ws, name, value)
        if isinstance(timeout, (int, float)):
            timeout = ClientWSTimeout(ws_close=timeout)  # (aiohttp's older meaning of a number here)
        if timeout is not None:
            ws._close_timeout = timeout.ws_close
            ws._receive_timeout = timeout.ws_receive
        if receive_timeout is not None:
            ws._receive_timeout = receive_timeout
        if not session._websockets:
            session._websockets = []
        session._websockets.append(ws)
    except BaseException as e:  # (a full heap too, until the session knows the websocket: nothing else would close it)
        memory = isinstance(e, MemoryError)  # (read before _done_with: see raise_if_retyped)
        session._done_with(conn, False)
        raise_if_retyped(memory, e)
        raise
    if heartbeat:
        ws._heard = ticks_ms()
        ws._beat = asyncio.create_task(ws._heartbeat(ms(heartbeat)))
    return ws


async def _answer(conn):
    # The server's answer to the handshake: (status, its header fields); the frames that came with it stay in the
    # connection's read-ahead
    try:
        version, status, reason, headers = await read_head(conn)
    except ClientResponseError as e:
        raise WSServerHandshakeError(e.status, e.message)
    return status, headers


def _check(status, answer, key, protocols):
    # RFC 6455 section 4.1: what the client must check before it speaks websocket (redirects are not followed)
    def fail(why):
        raise WSServerHandshakeError(status, why, answer)

    if status != 101:
        fail("Invalid response status" + (" (redirects are not followed)" if 300 <= status < 400 else ""))
    if answer.get("Upgrade", "").lower() != "websocket":
        fail("Invalid upgrade header")
    if "upgrade" not in answer.tokens("Connection"):
        fail("Invalid connection header")
    import hashlib

    accept = binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False).decode()
    if answer.get("Sec-WebSocket-Accept") != accept:
        fail("Invalid challenge response")
    chosen = answer.get("Sec-WebSocket-Protocol")
    if chosen is not None and chosen not in protocols:
        fail("the server chose a subprotocol that was not offered: %r" % chosen)
    if answer.get("Sec-WebSocket-Extensions"):
        fail("the server chose an extension that was not offered")
