# resp.content: aiohttp's StreamReader over a response's body. Beside the response's own reads (read(n), readinto,
# the _nowait ones), the reads apps port from aiohttp: readline(), readuntil(), readexactly(), readchunk(), and the
# iterators iter_chunked(n), iter_any(), iter_chunks() and `async for line`. Loaded when an app first asks for
# resp.content. Bytes read past a separator wait here, and any read hands them out before the body's next bytes.

import asyncio
from micropython import const

_ANY = const(1024)  # what iter_any(), readchunk() and a search for a separator ask for at a time
_LINE_MAX = const(65536)  # bytes up to a separator at most, aiohttp's limit (a body without one must not fill the heap)
_CRLF_DUE = const(-1)  # response._CRLF_DUE: the read ended a chunk (a const is inlined only in its own module)

try:
    IncompleteReadError = asyncio.IncompleteReadError
except AttributeError:  # MicroPython's asyncio has none (its readexactly raises EOFError)

    class IncompleteReadError(EOFError):
        # readexactly(n) met the end first: partial, the bytes read; expected, n (CPython's asyncio's)
        def __init__(self, partial, expected):
            super().__init__("%d bytes read on a total of %r expected bytes" % (len(partial), expected))
            self.partial = partial
            self.expected = expected

    asyncio.IncompleteReadError = IncompleteReadError  # so ported `except asyncio.IncompleteReadError` catches it


async def _now(value):
    # an awaitable that has its result already
    return value


def _joined(pieces):
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class Content:
    _pending = b""  # bytes read past a separator, handed out from _at on; b"" when none are held
    _at = 0

    def __init__(self, resp):
        self._resp = resp

    def __getattr__(self, name):
        # aiohttp's StreamReader names only: the response's own (status, json(), ...) are no names of its content
        if name == "total_bytes":  # (the body's bytes read so far: the response counts them)
            return self._resp.total_bytes
        raise AttributeError("'Content' object has no attribute '%s'" % name)

    def _take(self, n):
        # up to n of the bytes held (n < 0: all of them)
        pending, at = self._pending, self._at
        end = len(pending) if n < 0 else min(len(pending), at + n)
        if end == len(pending):
            self._pending, self._at = b"", 0
            return pending[at:] if at else pending
        self._at = end
        return pending[at:end]

    def _take_into(self, buf):
        data = self._take(len(buf))
        buf[: len(data)] = data
        return len(data)

    # --- the response's own reads, the bytes held first ----------------------------------------------------------
    def read(self, n=-1):
        if self._pending:
            return self._rest() if n < 0 else _now(self._take(n))
        return self._rest() if n < 0 else self._resp.read(n)

    def readinto(self, buf):
        return _now(self._take_into(buf)) if self._pending else self._resp.readinto(buf)

    def read_nowait(self, n=-1):
        return self._take(n) if self._pending else self._resp.read_nowait(n)

    def readinto_nowait(self, buf):
        return self._take_into(buf) if self._pending else self._resp.readinto_nowait(buf)

    def readany(self):
        return self.read(_ANY)

    async def _rest(self):
        # read(): the rest of the body; b"" once it was read (resp.read() keeps the whole body, this does not)
        held = self._take(-1)
        resp = self._resp
        body = b"" if resp._body is not None else await resp._read_whole()
        return held + body if held else body

    def at_eof(self):
        return not self._pending and self._resp._eof

    def is_eof(self):
        return self._resp._eof

    def exception(self):
        # the ClientPayloadError that cut the body short, or None
        return getattr(self._resp, "_failure", None)

    # --- aiohttp's reads beyond them -----------------------------------------------------------------------------
    def readline(self):
        return self.readuntil(b"\n")

    async def readuntil(self, separator=b"\n"):
        # the bytes up to and with separator, or up to the end of the body; a ValueError past _LINE_MAX
        size = len(separator)
        if not size:
            raise ValueError("Separator should be at least one-byte string")
        pieces = []  # what spans reads: its parts, joined once, so no copy grows read by read
        held = 0
        while True:
            pending, at = self._pending, self._at
            end = pending.find(separator, at)
            if end >= 0:
                pieces.append(self._take(end + size - at))
                return _joined(pieces)
            keep = max(at, len(pending) - size + 1)  # a separator may start in the last size - 1 bytes
            if keep > at:
                pieces.append(pending[at:keep])
                held += keep - at
                if held > _LINE_MAX:
                    raise ValueError("Line is too long")
            more = await self._resp.read(_ANY)
            if not more:
                self._pending, self._at = b"", 0
                if keep < len(pending):
                    pieces.append(pending[keep:])
                return _joined(pieces) if pieces else b""
            self._pending, self._at = pending[keep:] + more if keep < len(pending) else more, 0

    async def readexactly(self, n):
        pieces = []
        got = 0
        while got < n:
            data = await self.read(n - got)
            if not data:
                raise IncompleteReadError(b"".join(pieces), n)
            pieces.append(data)
            got += len(data)
        return _joined(pieces) if pieces else b""

    async def readchunk(self):
        # -> (bytes, whether they end an HTTP chunk of a chunked body); (b"", False) at the end of the body
        if self._pending:
            return self._take(-1), False
        resp = self._resp
        data = await resp.read(_ANY)
        return data, bool(data) and resp._chunked and resp._remaining == _CRLF_DUE

    # --- iterators -----------------------------------------------------------------------------------------------
    def __aiter__(self):
        return _Each(self.readline)

    def iter_chunked(self, n):
        # up to n bytes at a time, as they come; iter_chunked(0) ends at once and a negative n gives the whole rest,
        # as aiohttp's read(n) answers
        return _Each(lambda: self.read(n))

    def iter_any(self):
        return _Each(self.readany)

    def iter_chunks(self):
        return _Each(self.readchunk)


_END = (b"", False)  # readchunk() at the end of the body


class _Each:
    # each result of read() until the end: b"", or readchunk()'s (b"", False)
    def __init__(self, read):
        self._read = read

    def __aiter__(self):
        return self

    async def __anext__(self):
        data = await self._read()
        if not data or data == _END:
            raise StopAsyncIteration
        return data
