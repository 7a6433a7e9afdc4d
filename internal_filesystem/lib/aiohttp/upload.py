# A request body that streams, as aiohttp sends one: a file opened "rb" (with its size as Content-Length, when a
# seek can tell it) or an async iterable of bytes (sent chunked). It goes out piece by piece: a log or a photo is
# never read whole into the heap. Loaded by the first request that sends one.

from micropython import const

from . import errors

_PIECE = const(2048)  # bytes read from a file and sent at a time
_LAST_CHUNK = b"0\r\n\r\n"  # (no trailers)


def upload(data):
    # -> the Upload for data, or None when data is no stream
    if hasattr(data, "readinto"):
        return _File(data)
    if hasattr(data, "__aiter__"):
        return _Iterable(data)
    return None


class Upload:
    size = None  # the body's length when known ahead: Content-Length; None: chunked
    _sent = False

    def rewind(self):
        # -> whether the body can be sent again from its start (a retry, a 307 or 308 redirect)
        return not self._sent  # (an iterator's pieces are gone once sent)

    def field(self):
        # the head's line that frames the body
        if self.size is None:
            return "Transfer-Encoding: chunked\r\n"
        return "Content-Length: %d\r\n" % self.size


class _File(Upload):
    def __init__(self, file):
        self._file = file
        try:
            self._start = file.tell()
            self.size = file.seek(0, 2) - self._start
            file.seek(self._start)
        except (AttributeError, OSError):  # a pipe, a socket: read to its end, in chunks
            self._start = None

    def rewind(self):
        if not self._sent:
            return True
        if self._start is None:
            return False
        self._file.seek(self._start)
        return True

    async def send_to(self, conn):
        self._sent = True
        buf = bytearray(_PIECE)
        view = memoryview(buf)
        left = self.size  # None: up to the file's end, in chunks
        while left is None or left:
            n = self._file.readinto(buf if left is None or left >= _PIECE else view[:left])
            if not n:
                if left is None:
                    break
                raise errors.ClientConnectionError("the file ended %d bytes short of its size" % left)
            if left is None:
                await _chunk(conn, view[:n])
            else:
                left -= n
                await conn.send(view[:n])
        if left is None:
            await conn.send(_LAST_CHUNK)


class _Iterable(Upload):
    def __init__(self, iterable):
        self._iterable = iterable

    async def send_to(self, conn):
        self._sent = True
        async for data in self._iterable:
            if not isinstance(data, (bytes, bytearray, memoryview)):  # (a str's size line would count characters)
                raise TypeError("an async iterable's pieces must be bytes, not %s" % type(data).__name__)
            if data:  # (an empty chunk would end the body)
                await _chunk(conn, data)
        await conn.send(_LAST_CHUNK)


async def _chunk(conn, data):
    # one chunk of a chunked body: its size line, its bytes, CRLF
    await conn.send(b"%x\r\n" % len(data))
    await conn.send(data)
    await conn.send(b"\r\n")
