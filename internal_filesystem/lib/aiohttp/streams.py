# aiohttp's iterators over a body: resp.content.iter_chunked(n), iter_any(), and `async for line in resp.content`.
# Loaded when an app first asks for one (ClientResponse.__getattr__).

_ANY = 1024  # what iter_any() asks for at a time: what is there, up to this
_LINE_MAX = 65536  # bytes in one line at most, as aiohttp's limit (a body without newlines must not fill the heap)


def method(resp, name):
    # -> the response's iterator method called name
    if name == "iter_chunked":
        return lambda n: _Chunks(resp, n)
    if name == "iter_any":
        return lambda: _Chunks(resp, _ANY)
    return lambda: _Lines(resp)  # __aiter__


class _Chunks:
    # up to size bytes at a time, as they come; ends with the body
    def __init__(self, resp, size):
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self._resp = resp
        self._size = size

    def __aiter__(self):
        return self

    async def __anext__(self):
        data = await self._resp.read(self._size)
        if not data:
            raise StopAsyncIteration
        return data


class _Lines:
    # each line with its b"\n" (the last one without, if the body ends without); what was read past the line is
    # kept here, so the iterator owns the rest of the body once it started
    def __init__(self, resp):
        self._resp = resp
        self._pending = b""  # the last read, from _at on not handed out yet
        self._at = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        pieces = []  # a line that spans reads: its parts, joined once, so no copy grows read by read
        size = 0
        while True:
            pending, at = self._pending, self._at
            end = pending.find(b"\n", at)
            if end >= 0:
                self._at = end + 1
                pieces.append(pending[at : end + 1])
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if at < len(pending):
                pieces.append(pending[at:] if at else pending)
                size += len(pending) - at
                if size > _LINE_MAX:
                    raise ValueError("Line is too long")
            self._pending, self._at = await self._resp.read(_ANY), 0
            if not self._pending:
                if not pieces:
                    raise StopAsyncIteration
                return b"".join(pieces)
