# Content-Encoding gzip and deflate, undone while the body streams (MicroPython's `deflate`). Imported only when a
# response comes coded.

import io
from micropython import const

from .errors import ClientPayloadError

_INPUT = const(2048)  # coded bytes kept in hand
_AHEAD = const(1536)  # topped up below this: one small output step can then never run the decoder dry
_STEP = const(256)  # output per step while the body still streams
_FAIR_SHARE = const(65536)  # connection.FAIR_SHARE (a const is inlined only in its own module)


class Inflate(io.IOBase):
    # DeflateIO pulls its input synchronously and can't resume after running dry, so input is kept well ahead of what
    # one output step can take; once the body has all arrived it may drain freely. The request lasts until the last
    # byte is decoded: its connection, and so its deadline, is let go then.
    _stream = None  # the DeflateIO, made once the first input shows which format a "deflate" body has
    _start = _end = 0  # the input not decoded yet: _input[_start:_end]
    _arrived = _done = False

    def __init__(self, reader, coding):
        self._reader = reader
        self._gzip = coding != "deflate"
        self._input = bytearray(_INPUT)

    def readinto(self, buf, *args):  # DeflateIO's input
        n = min(len(buf), self._end - self._start)
        buf[:n] = memoryview(self._input)[self._start : self._start + n]
        self._start += n
        return n

    async def _top_up(self):
        buf, start, end = self._input, self._start, self._end
        if start:
            buf[: end - start] = memoryview(buf)[start:end]
            self._end = end = end - start
            self._start = 0
        while not self._arrived and end < len(buf):
            n = await self._reader._readinto_framed(memoryview(buf)[end:])
            if not n:
                self._arrived = True
            end += n
            self._end = end

    def _format(self):
        # "deflate" is meant to be zlib (RFC 9110), yet some servers send a bare deflate stream: a zlib stream
        # starts with a header whose method is 8 and whose two bytes are a multiple of 31
        import deflate

        if self._gzip:
            return deflate.GZIP
        buf, i = self._input, self._start
        zlib = self._end - i >= 2 and buf[i] & 0x0F == 8 and (buf[i] << 8 | buf[i + 1]) % 31 == 0
        return deflate.ZLIB if zlib else deflate.RAW

    # (not named readinto: that is the input side, above)
    async def decode_into(self, buf):
        reader = self._reader
        if self._done:
            return 0
        conn = reader._conn
        if conn.streak >= _FAIR_SHARE:  # a small body may inflate to megabytes: others get turns, the deadline holds
            await conn.take_turn()
        if not self._arrived and self._end - self._start < _AHEAD:
            await self._top_up()
        if self._stream is None:
            import deflate

            self._stream = deflate.DeflateIO(self, self._format())
        out = buf if self._arrived or len(buf) <= _STEP else memoryview(buf)[:_STEP]
        try:
            n = self._stream.readinto(out)
        except (OSError, EOFError, ValueError) as e:
            reader._let_go(self._arrived)  # (a body whose HTTP framing ended cleanly leaves its connection reusable)
            raise ClientPayloadError("compressed body is corrupt or cut short (%s)" % (e,))
        if not n:
            if not self._arrived or self._end > self._start:
                reader._let_go(self._arrived)
                raise ClientPayloadError("compressed body is corrupt or cut short")
            self._done = True
            reader._let_go(True)
        conn.streak += n
        return n
