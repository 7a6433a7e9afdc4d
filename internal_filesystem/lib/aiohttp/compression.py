# Content-Encoding gzip and deflate, undone while the body streams (MicroPython's `deflate`). Imported only when a
# response comes coded.

import io
from micropython import const

from . import errors

_INPUT = const(4096)  # coded bytes kept in hand
_AHEAD = const(1536)  # topped up below this: one small output step can then never run the decoder dry
_MOVE = const(512)  # coded bytes that come from the network, or move to the front, at a time
_STEP = const(256)  # output per step while the body still streams
_FAIR_SHARE = const(65536)  # connection.FAIR_SHARE (a const is inlined only in its own module)


class Inflate:
    # DeflateIO pulls its input one byte at a time, synchronously, and can't resume after running dry: the coded bytes
    # wait in a BytesIO it reads from C (a stream of our own would be called from C for every coded byte, with a new
    # buffer object each time), kept well ahead of what one output step can take; once the body has all arrived, the
    # decoder may drain it. A BytesIO can't be truncated: past the valid input lies old input, and a step that read
    # into it read past the end of a body cut short. The request lasts until the last byte is decoded: its
    # connection, and so its deadline, is let go then.
    _stream = None  # the DeflateIO, made once the first input shows which format a "deflate" body has
    _valid = 0  # bytes of _coded that are input
    _read_at = 0  # where the decoder reads next (_coded's position moves while input is added)
    _arrived = _done = False

    def __init__(self, reader, coding):
        self._reader = reader
        self._gzip = coding != "deflate"
        self._coded = io.BytesIO(_INPUT)
        self._moving = bytearray(_MOVE)

    async def _top_up(self):
        # The input not decoded yet goes to the front, then new input after it. Each step is recorded before the
        # next await: a read cancelled meanwhile (an app's own timeout) leaves a state the next read goes on from.
        coded = self._coded
        view = memoryview(self._moving)
        start = self._read_at
        left = self._valid - start
        moved = 0
        while moved < left and start:
            coded.seek(start + moved)
            n = coded.readinto(view[: min(_MOVE, left - moved)])
            coded.seek(moved)
            coded.write(view[:n])
            moved += n
        self._read_at = 0
        self._valid = valid = left
        while not self._arrived and valid < _INPUT:
            n = await self._reader._readinto_framed(view[: min(_MOVE, _INPUT - valid)])
            if not n:
                self._arrived = True
            else:
                coded.seek(valid)
                coded.write(view[:n])
                valid += n
                self._valid = valid

    def _format(self):
        # "deflate" is meant to be zlib (RFC 9110), yet some servers send a bare deflate stream: a zlib stream
        # starts with a header whose method is 8 and whose two bytes are a multiple of 31
        import deflate

        if self._gzip:
            return deflate.GZIP
        head = self._moving
        self._coded.seek(self._read_at)
        n = self._coded.readinto(memoryview(head)[: min(2, self._valid - self._read_at)])
        zlib = n == 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return deflate.ZLIB if zlib else deflate.RAW

    async def decode_into(self, buf):
        reader = self._reader
        if self._done:
            return 0
        conn = reader._conn
        if conn.streak >= _FAIR_SHARE:  # a small body may inflate to megabytes: others get turns, the deadline holds
            await conn.take_turn()
        if not self._arrived and self._valid - self._read_at < _AHEAD:
            await self._top_up()
        if self._stream is None:
            import deflate

            coding = self._format()
            # a bare stream names no window size: the largest, 32 KB as with gzip (DeflateIO's default, 256 bytes,
            # fails at the first reference further back)
            self._stream = deflate.DeflateIO(self._coded, coding, 15 if coding == deflate.RAW else 0)
        out = buf if self._arrived or len(buf) <= _STEP else memoryview(buf)[:_STEP]
        coded = self._coded
        coded.seek(self._read_at)
        try:
            n = self._stream.readinto(out)
        except (OSError, EOFError, ValueError) as e:
            self._fail(e)
        self._read_at = coded.tell()
        if self._read_at > self._valid:  # it read past the input: the body was cut short (or corrupt)
            self._fail(None)
        if not n:
            if not self._arrived or self._valid > self._read_at:
                self._fail(None)
            self._done = True
            reader._let_go(True)
        conn.streak += n
        return n

    def _fail(self, reason):
        # The connection goes too: a body that does not decode may have been framed wrong (a byte more than its
        # Content-Length would be read as the start of the next answer)
        self._reader._let_go(False)
        reason = " (%s)" % (reason,) if reason else ""
        raise errors.ClientPayloadError("compressed body is corrupt or cut short" + reason)
