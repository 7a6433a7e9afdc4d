# A response: its head, read into blocks that headers search, and its body, framed by Content-Length, chunked
# encoding or the end of the connection, read without a generator or an allocation per chunk while bytes come.
#
# The path of a body byte (docs/design.md): socket -> readinto_nowait(buf) -> the caller's buffer. When the socket has
# nothing yet, readinto(buf) returns the response's one reusable _BodyRead, which waits in the event loop's poller and
# then reads the same way. Bytes that came with the head or a chunk-size line wait in the connection's read-ahead and
# are handed out first; framing that is not all here, decoders and the end of the body take a generator.

import sys
from micropython import const

from . import poll
from . import errors

_HEADERS_MAX = const(100)  # header fields in one head
_HEAD_MAX = const(32768)  # bytes in one head
_BLOCK = const(1024)  # a head is kept in blocks of about this size (see CIMultiDictProxy)
_READ_ALL_PIECE = const(1024)  # read() of a body of unknown length reads it in pieces of this size
_ASK_ABOVE = const(16384)  # a body up to this size is allocated without asking gc.mem_free(), which scans the heap
_FAIR_SHARE = const(65536)  # connection.FAIR_SHARE (a const is inlined only in its own module)
_DRY = const(-1)  # a connection's streak once a straight() reader's last read found nothing (see turn())
_UNTIL_CLOSE = const(0x3FFFFFFF)  # _remaining of a body the end of the connection frames
_CRLF_DUE = const(-1)  # _remaining: the CRLF after a chunk's data comes next
_TRAILERS_DUE = const(-2)  # _remaining: the last chunk was read, its trailers come next
_LAST_CHUNK = const(7)  # "\r\n0\r\n\r\n": the last chunk's line after a chunk's CRLF, and the empty trailers
_DECODABLE = ("gzip", "x-gzip", "deflate")  # the Content-Encodings compression.Inflate undoes
# Content-Encodings that code nothing: identity, and what servers send meaning it (curl reads "none" so; a charset is
# what s3cmd and others set on S3 objects). DownloadManager takes a length and ranges of such a body as they are.
UNCODED = ("identity", "none", "utf-8", "utf8")
TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # a field name's bytes
_HEX = b"0123456789abcdefABCDEF"

# The states of a _BodyRead
_IDLE = const(0)
_TO_WAIT = const(1)  # it found nothing: the next step waits in the poller
_WAITING = const(2)
_IN_GENERATOR = const(3)  # it goes on in the generator of a read that needs one (gen)
_RESULT = const(4)  # stop holds the result
_TO_RUN = const(5)  # made, not run yet

_len = len  # see docs/design.md: builtins are looked up per call


def latin1(line):
    # Header bytes that are not UTF-8 (a latin-1 filename, say) as text: MicroPython has no latin-1 codec
    try:
        return line.decode()
    except UnicodeError:
        pass
    out = bytearray()  # each byte from 0x80 up becomes its code point's two UTF-8 bytes
    for b in line:
        if b < 0x80:
            out.append(b)
        else:
            out.append(0xC0 | b >> 6)
            out.append(0x80 | b & 0x3F)
    return out.decode()


class CIMultiDictProxy:
    # Response headers, read-only, with case-insensitive lookup: the head kept as the bytes it arrived in,
    # "\nname:value\n...\n" with names in lower case (as HTTP/2 sends them), in blocks of about _BLOCK bytes that
    # hold whole fields, so that no head needs one long free run of the heap. A typical head is one block.
    def __init__(self, blocks):
        self._blocks = blocks

    def _key(self, name):
        return ("\n%s:" % name.lower()).encode()

    def getall(self, name):
        key = self._key(name)
        out = []
        for block in self._blocks:
            i = block.find(key)
            while i >= 0:
                start = i + _len(key)
                i = block.find(b"\n", start)
                out.append(latin1(block[start:i]))
                i = block.find(key, i)
        return out

    def get(self, name, default=None):
        # the first value of a repeated field, as aiohttp's CIMultiDict answers (getall() gives them all)
        values = self.getall(name)
        return values[0] if values else default

    def tokens(self, name):
        # a list-valued field (Connection, Transfer-Encoding...), which may come in several lines, as its lower-case
        # tokens without parameters: "gzip, Chunked" -> ["gzip", "chunked"]; so "chunkeda" is not "chunked". An
        # element with no name before its ";" (";chunked") stays whole: a name no one knows, not an empty element.
        out = []
        for value in self.getall(name):
            for element in value.split(","):
                element = element.strip(" \t")  # (strip() would take a form feed too)
                if element:
                    out.append((element.split(";", 1)[0].rstrip(" \t") or element).lower())
        return out

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name):
        key = self._key(name)
        for block in self._blocks:
            if key in block:
                return True
        return False

    def items(self):
        # each name and value decoded on its own, as get() does: one latin-1 field must not change the others
        out = []
        for block in self._blocks:
            for field in bytes(block).split(b"\n"):
                if field:
                    name, _, value = field.partition(b":")
                    out.append((latin1(name), latin1(value)))
        return out

    def keys(self):
        return [name for name, value in self.items()]

    def values(self):
        return [value for name, value in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return sum(block.count(b"\n") - 1 for block in self._blocks)

    def __repr__(self):
        return "<CIMultiDictProxy %r>" % self.items()


# --- the head ------------------------------------------------------------------------------------------------------


async def read_head(conn):
    # -> (version, status, reason, headers) of the answer on conn; 1xx heads before it (100 Continue, 103 Early Hints)
    # are skipped, 101 Switching Protocols is an answer. Limits: _HEADERS_MAX fields, _HEAD_MAX bytes.
    size = 0
    while True:
        line = await conn.readline()
        if not line:
            raise errors.ServerDisconnectedError("server closed the connection without a response")
        parts = latin1(line).rstrip("\r\n").split(" ", 2)
        if (_len(parts) < 2 or _len(parts[0]) != 8 or not parts[0].startswith("HTTP/1.") or not parts[0][7].isdigit()
                or _len(parts[1]) != 3 or not parts[1].isdigit() or not "1" <= parts[1][0] <= "5"
                or line.find(b"\r", 0, _len(line) - 2) >= 0 or b"\0" in line):  # (a bare CR or a NUL, as in a value)
            raise errors.ClientResponseError(0, "bad status line %r" % line[:80])  # (a status is 100 to 599)
        status = int(parts[1])
        size += _len(line)
        blocks = [bytearray()]  # each field copied from the read-ahead once (see CIMultiDictProxy)
        fields = 0
        while True:
            end = await conn.line_end()
            if not end:
                raise errors.ServerDisconnectedError("connection closed inside the response head")
            buf, start = conn.buf, conn.pos
            size += end - start  # (each line is capped by the read-ahead's limit; their sum, 1xx heads too, here)
            if size > _HEAD_MAX:
                raise errors.ClientResponseError(status, "response head larger than %d bytes" % _HEAD_MAX)
            if buf[start] in (10, 13) and end - start <= 2:  # the blank line
                conn.pos = end
                break
            fields += 1
            if fields > _HEADERS_MAX:
                raise errors.ClientResponseError(status, "too many header fields")
            if not _add_field(blocks, buf, start, end):
                line = bytes(buf[start : min(end, start + 80)])
                raise errors.ClientResponseError(status, "bad header line %r" % line)
            conn.pos = end
        if not 100 <= status < 200 or status == 101:
            break
    blocks[-1] += b"\n"
    reason = parts[2] if _len(parts) > 2 else ""
    return parts[0], status, "OK" if reason == "OK" else reason, CIMultiDictProxy(blocks)  # (the constant "OK")


def is_field(buf, start, end):
    # whether buf[start:end] is a header (or trailer) line: a name of token bytes, then ":" (RFC 9110 section 5.1).
    # A name that is not one ("Transfer-Encodin g") would hide the field it meant, and so the body's framing.
    colon = buf.find(b":", start, end)
    if colon <= start:
        return False
    if buf[start:colon].replace(b"-", b"").isalpha():  # the usual name (letters and "-"), checked in C at once
        return True
    i = start
    while i < colon and buf[i] in TOKEN:
        i += 1
    while start < i < colon and buf[i] in b" \t":  # "Name : value": blanks a proxy removes (RFC 9112 section 5.1)
        i += 1
    return i == colon


def _add_field(blocks, buf, start, end):
    # One header line, buf[start:end], onto the head's last block as "\nname:value"; False if it is no field. A line
    # that starts with a space or tab goes on the field above, after a space (obs-fold, RFC 9112 section 5.2): read
    # as a field of its own, its text became a header the server never sent.
    fold = buf[start] in (32, 9)
    if not fold:
        if not is_field(buf, start, end):
            return False
        colon = buf.find(b":", start, end)
    else:
        colon = start if blocks[-1] else -1  # (no field above to go on)
        if colon < 0:
            return False
    view = memoryview(buf)
    i, j = colon, end
    if not fold:
        while buf[i - 1] in b" \t":  # (blanks before the colon, which is_field let through)
            i -= 1
        name = bytes(view[start:i]).lower()
        i = colon + 1
    while i < j and buf[i] in b" \t\r\n":  # the value without the blanks around it (a form feed is no blank)
        i += 1
    while j > i and buf[j - 1] in b" \t\r\n":
        j -= 1
    if buf.find(b"\r", i, j) >= 0 or buf.find(b"\0", i, j) >= 0:  # (a value that could not be sent back, as If-Range)
        return False
    block = blocks[-1]
    if not fold:
        if block and _len(block) + _len(name) + j - i > _BLOCK:  # a new block, the last one closed by its "\n"
            block += b"\n"
            block = bytearray()
            blocks.append(block)
        block += b"\n"
        block += name
        block += b":"
    elif i < j and block.find(b":", block.rfind(b"\n")) < _len(block) - 1:  # (an empty value gains no space)
        block += b" "
    block += view[i:j]
    return True


def _content_length(headers, status):
    # Content-Length: digits only, one number however often it is repeated (RFC 9112 section 6.3), and no more
    # than a machine word holds (socket reads take the count as one)
    values = headers.getall("Content-Length")
    if not values:
        return None
    n = None
    for value in ",".join(values).split(","):
        value = value.strip(" \t")
        if not value.isdigit() or n is not None and int(value) != n or int(value) > sys.maxsize:
            raise errors.ClientResponseError(status, "bad Content-Length %r" % ", ".join(values)[:40])
        n = int(value)
    return n


def _framing(headers, status, bodyless, version):
    # -> (Content-Length or None, chunked) as the head frames the body. Transfer codings other than chunked are
    # refused: their bytes are not the resource. So is any in an HTTP/1.0 answer, whose framing RFC 9112 (6.1)
    # says to treat as faulty: no HTTP/1.0 server sends one.
    if bodyless:
        return 0, False
    codings = [t for t in headers.tokens("Transfer-Encoding") if t != "identity"]
    if not codings:
        return _content_length(headers, status), False
    if version == "HTTP/1.0":
        raise errors.ClientResponseError(status, "Transfer-Encoding in an HTTP/1.0 answer")
    if codings != ["chunked"]:
        raise errors.ClientResponseError(status, "unsupported Transfer-Encoding %r" % ", ".join(codings)[:40])
    return None, True


def content_codings(headers):
    # -> the body's Content-Encodings in order, lower-case, leaving out those that code nothing (";gzip" is one no
    # one can undo: see tokens)
    return [t for t in headers.tokens("Content-Encoding") if t not in UNCODED]


def _coding(headers, status):
    # -> the Content-Encoding to undo, or None. One that can't be undone is refused: coded bytes handed on as the
    # body would be wrong bytes reported as success.
    codings = content_codings(headers)
    if not codings:
        return None
    if _len(codings) > 1 or codings[0] not in _DECODABLE:
        raise errors.ClientResponseError(status, "cannot decode Content-Encoding %r" % ", ".join(codings)[:40])
    return codings[0]


def _chunk_size_line(line):
    # -> the size a chunk-size line gives, or -1 when it is none: 1 to 16 hex digits, then optionally an extension
    # (";..."), then spaces, then the line's end (RFC 9112 section 7.1, and the spaces ESPAsyncWebServer pads a size
    # to four characters with). int(x, 16) took "+0", "0x10", "1_0" and spaces before the digits.
    end = _len(line) - (2 if line.endswith(b"\r\n") else 1)
    while end and line[end - 1] == 32:
        end -= 1
    i = 0
    while i < end and line[i] in _HEX:
        i += 1
    if not 0 < i <= 16:
        return -1
    if i < end:  # an extension, or what is not one: chunkext.py judges it, loaded when the first one comes
        from . import chunkext

        if not chunkext.extensions_ok(line[i:end]):
            return -1
    return int(line[:i], 16)


def _chunk_size(buf, start, end):
    # The chunk size in the line buf[start:end + 1] ("hex\r\n", "hex  \r\n" or "hex;ext\r\n"), or 0 when it is the
    # last chunk or looks unusual in any way: the slow path then reads the line again and does the full checks.
    if end < 0 or end - start > 9:
        return 0
    n = 0
    i = start
    while i < end:
        digit = buf[i]
        if 48 <= digit <= 57:
            n = n * 16 + digit - 48
        elif 97 <= digit <= 102:
            n = n * 16 + digit - 87
        elif 65 <= digit <= 70:
            n = n * 16 + digit - 55
        else:
            break
        i += 1
    while i < end - 1 and buf[i] == 32:  # (ESPAsyncWebServer's padding)
        i += 1
    if buf[end - 1] != 13 or i != end - 1:  # the digits end the line (an extension is checked the slow way)
        return 0
    return n


def _heap_holds(n):
    # Whether n bytes can be had: a length the server announced is only allocated up front when the heap holds it.
    # gc.mem_free() walks the whole allocation table, which costs more than the rest of a keep-alive request, so a
    # small body is simply allocated, as any code would.
    if n <= _ASK_ABOVE:
        return True
    import gc

    if n <= gc.mem_free():
        return True
    gc.collect()
    return n <= gc.mem_free()


def fitting_bytearray(n):
    # n bytes, or fewer (down to 128) when the heap holds no free run that long: made before a byte is read, so a
    # smaller read loses nothing (chunk callbacks are promised at most chunk_size bytes, not exactly that many).
    # DownloadManager's read buffers are made with it too.
    while True:
        try:
            return bytearray(n)
        except MemoryError:
            if n <= 128:
                raise
            n >>= 1


# --- the body ------------------------------------------------------------------------------------------------------


class _BodyRead:
    # The awaitable readinto(buf) and read(n) return: one per response, reused by every read (a generator per read
    # was garbage at every chunk; docs/design.md). Like a coroutine it does nothing until it runs (awaited, or by the
    # task create_task() or wait_for() made for it); then it reads what the socket holds, and
    # - has the result: awaiting it raises StopIteration(result) (poll.finished_task raises it from C). The one for a
    #   count is kept while the count repeats (a full buffer): a new one per call would be garbage;
    # - found nothing: it waits for the socket in the poller (with poll.internals), and reads once woken;
    # - or meets anything else (the end of the body, a chunk-size line split across reads, a decoder, FAIR_SHARE bytes
    #   without a wait, nothing after a wait) and goes on in the generator that handles it.
    state = _IDLE
    stop = None  # the StopIteration that carries the result
    count = -1  # the count stop carries; -1: it carries bytes, let go once raised
    gen = None
    buf = None  # the caller's buffer for readinto(buf); None for read(want)
    want = 0
    ready = None  # the finished Task that raises stop from C; False where there is none

    def __init__(self, reader):
        self.reader = reader

    def __iter__(self):
        if self.state == _TO_RUN:
            self._run(False)
        if self.state != _RESULT or self.count < 0:
            return self
        task = self.ready
        if task is None:
            task = self.ready = poll.finished_task(self) or False
        if task is False:
            return self
        self.state = _IDLE
        task.data = self.stop
        return task

    def send(self, value=None):
        state = self.state
        if state == _TO_RUN or state == _WAITING:
            self._run(state == _WAITING)
            state = self.state
        if state == _TO_WAIT:
            conn = self.reader._conn
            conn.arm()
            poll.register(self.reader._waits_on(), False)
            self.state = _WAITING
            return None
        if state == _IN_GENERATOR:
            return self._step(None)
        if state != _RESULT:
            raise RuntimeError("this read was awaited already")
        stop = self.stop
        self.state = _IDLE
        if self.count < 0:
            self.stop = None  # bytes, which this must not keep alive once handed out
        stop.__traceback__ = None  # (raised again and again, it would grow its traceback)
        raise stop

    __next__ = send

    def throw(self, *exc):
        e = exc[0] if _len(exc) == 1 else exc[1]
        if self.gen is not None:
            return self._step(e)
        state = self.state
        self._reset()
        if state == _WAITING:
            self.reader._conn.woke(e)
        raise e

    def close(self):
        gen = self.gen
        self.gen = None
        if self.state == _WAITING:
            self.reader._conn.wait_until = None
        self._reset()
        if gen is not None:
            gen.close()

    def _reset(self):
        # idle, holding no buffer and no bytes
        self.state = _IDLE
        self.buf = None
        if self.count < 0:
            self.stop = None

    def _run(self, woken):
        # The read, when this first runs or the poller woke it. No try here: the frame stays off the heap
        # (docs/design.md: frames).
        reader = self.reader
        conn = reader._conn
        if woken:
            conn.streak = 0  # others ran while this task waited
            conn.wait_until = None
        buf = self.buf
        got = reader._read_now(self)
        if got or got == 0:  # bytes, a count, or 0 for an empty buffer (None and b"": nothing yet)
            self.state = _RESULT
            self.buf = None
            if buf is None or got != self.count:
                self.stop = StopIteration(got)
                self.count = -1 if buf is None else got
        elif (not woken and poll.internals and conn.pos == conn.filled and conn.sock is not None and not reader._eof
              and conn.streak < _FAIR_SHARE and reader._decoder is None and (reader._remaining > 0 or reader._chunked)):
            self.state = _TO_WAIT
        else:
            self.gen = reader._readinto_slowly(buf) if buf is not None else reader._read_whole(self.want)
            self.state = _IN_GENERATOR
            self.buf = None

    def _step(self, e):
        # one step of the generator the read goes on in
        try:
            if e is None:
                return self.gen.send(None)
            return self.gen.throw(e)
        except BaseException:  # its result (StopIteration) or its error: this read is over
            self.gen = None
            self.state = _IDLE
            raise


class StreamReader:
    # The body's reads. A response is its own reader (ClientResponse below): one object per request, and DownloadManager
    # reads it so; resp.content (aiohttp/streams.py) adds aiohttp's other reads on top of these.
    _chunked = _until_close = _eof = False
    _decoder = None  # compression.Inflate for a coded body
    _read = None  # the _BodyRead that readinto and read(n) return, made on first use
    _remaining = 0  # body bytes left in the current frame (a chunk, or the whole body), or a _..._DUE state

    def _set_framing(self, length, chunked):
        self.total_bytes = 0
        if chunked:
            self._chunked = True
        elif length is None:
            self._until_close = True
            self._remaining = _UNTIL_CLOSE
        else:
            self._remaining = length
            if not length:
                self._eof = True

    def at_eof(self):
        return self._eof

    async def _next_chunk(self):
        # The current frame is used up: the next chunk's size line, or the end of the body. Each step is recorded as
        # soon as its line is taken: a read cancelled while it waits for the next line (an app's own timeout) leaves
        # a state the next read goes on from.
        conn = self._conn
        if self._remaining == _CRLF_DUE:
            if (await conn.readline()) not in (b"\r\n", b"\n"):
                raise errors.ClientPayloadError("malformed chunked encoding")
            self._remaining = 0
        if not self._remaining:
            line = await conn.readline()
            if not line:
                raise errors.ClientPayloadError("response payload is not completed (chunked body cut short)")
            n = _chunk_size_line(line)
            if n < 0:
                raise errors.ClientPayloadError("bad chunk size line %r" % line[:40])
            if n:
                self._remaining = n
                return n
            self._remaining = _TRAILERS_DUE
            conn.within_one_read(conn.deadline)
        size = 0
        while True:  # the trailers, up to the empty line: no longer than a head may be
            line = await conn.readline()
            if not line:
                raise errors.ClientPayloadError("response payload is not completed (no end of trailers)")
            if line in (b"\r\n", b"\n"):
                break
            size += _len(line)
            if size > _HEAD_MAX:
                raise errors.ClientPayloadError("trailers larger than %d bytes" % _HEAD_MAX)
            if not is_field(line, 0, _len(line)):  # (a lost chunk-size line makes the rest of the body look like these)
                raise errors.ClientPayloadError("bad trailer line %r" % line[:40])
        self._body_ended(True)
        return 0

    def _body_ended(self, reusable):
        self._eof = True
        self._remaining = 0
        if self._decoder is None or not reusable:  # (a decoder ends the request once it has decoded the last byte)
            self._let_go(reusable)

    def readinto_nowait(self, buf):
        """Body bytes that are already here, read into buf without waiting: n > 0 (0 for an empty buf), or None
        when the next read has to wait, or meets the end of the body, a trailer or a content coding (then
        `await readinto(buf)`). DownloadManager's hot loop calls it before awaiting. Allocates nothing. A connection
        reset raises the socket's OSError (readinto makes it a ClientPayloadError)."""
        # The common case only, a whole buffer straight from the socket: no try and no len() (docs/design.md: frames,
        # builtins). The socket's own limit argument keeps the read inside the body.
        conn = self._conn
        remaining = self._remaining
        if (remaining <= 0 or conn.pos < conn.filled or conn.streak >= _FAIR_SHARE or self._decoder is not None
                or conn.sock is None):
            return self._readinto_rest(buf)
        n = conn.sock.readinto(buf, remaining)
        if n:  # None: nothing waiting; 0: the peer closed, which the awaited path reports
            conn.streak += n
            if remaining == n or remaining == _UNTIL_CLOSE:
                return self._count(n)
            self.total_bytes += n  # (_count's common case, inlined: a method call costs a lookup that misses)
            self._remaining = remaining - n
            return n
        if not buf:
            return 0  # an empty buffer: nothing to wait for

    def straight(self):
        # -> how many of the body's next bytes may be read from the socket itself (resp.connection.sock): the rest of
        # the frame, or of the fair share before other tasks get a turn; 0 while read-ahead bytes wait, with a
        # decoder, at the frame's end. A reader that takes them reads with sock.readinto(buf, k), tells
        # went_straight() how many it read and awaits ClientResponse.turn() before it reads any other way.
        # DownloadManager's file mode reads so: a chunk costs no Python call of ours (docs/design.md: the path of a
        # byte).
        conn = self._conn
        remaining = self._remaining
        if (remaining <= 0 or conn.pos < conn.filled or conn.streak >= _FAIR_SHARE or self._decoder is not None
                or conn.sock is None):
            return 0
        return min(remaining, _FAIR_SHARE - conn.streak)

    def went_straight(self, n, dry, due=False):
        # n bytes were read from the socket that straight() gave, within the bytes it allowed; dry: its last read
        # found nothing (ClientResponse.turn() then waits for the socket); due: the reader wants its turn now (its
        # sink held the loop long)
        conn = self._conn
        if n:
            conn.streak += n
            self._count(n)
        if dry and conn.streak < _FAIR_SHARE:
            conn.streak = _DRY
        elif due:
            conn.streak = _FAIR_SHARE

    def read_nowait(self, n=-1):
        """Body bytes that are already here, at most n (n < 0: a buffer's worth), without waiting: b"" when the
        next read has to wait or the body is over (`await read(n)` then waits, or says which). DownloadManager's
        stream mode hands these very bytes to its chunk callback: the socket makes the bytes object, and no
        buffer is filled and copied. A connection reset raises the socket's OSError, as readinto_nowait."""
        conn = self._conn
        remaining = self._remaining
        if (n <= 0 or remaining <= 0 or conn.pos < conn.filled or conn.streak >= _FAIR_SHARE
                or self._decoder is not None or conn.sock is None):
            return self._read_rest(n)
        data = conn.sock.read(n if n < remaining else remaining)  # None: nothing waiting; b"": the peer closed
        if not data:
            return b""
        n = _len(data)
        conn.streak += n
        self._count(n)
        return data

    def _read_rest(self, n):
        # read_nowait's other cases: the next chunk's size line, and read-ahead bytes (copied out, at most n). No
        # buffer is made before there are bytes for it: at every chunk boundary a read may find nothing yet.
        conn = self._conn
        if not n or conn.sock is None:
            return b""
        ready = self._ready_in_frame()
        if not ready:
            return b""
        if n < 0:
            n = _READ_ALL_PIECE
        if conn.pos == conn.filled:
            return self.read_nowait(n)  # the size line came alone: the rest is the socket's
        n = min(n, ready, conn.filled - conn.pos)
        data = bytes(memoryview(conn.buf)[conn.pos : conn.pos + n])
        conn.handed_out(n)
        conn.streak += n
        self._count(n)
        return data

    def _waits_on(self):
        # What a read that found nothing waits on (Connection.readable_by): the socket was read and had nothing,
        # unless the frame was over and no size line was read for (no read-ahead, the trailers due, or a chunk's
        # CRLF taken from the read-ahead, which leaves it full: a size line read that found nothing leaves it empty)
        remaining = self._remaining
        conn = self._conn
        return conn.readable_by(remaining > 0 or conn.buf is not None and not conn.filled
                                and remaining != _TRAILERS_DUE)

    def _readinto_rest(self, buf):
        # readinto_nowait's other cases: the rest of a frame shorter than buf, read-ahead bytes, the next chunk's
        # size line, and all that must take the awaited way (None).
        if not buf:
            return 0  # as io's readinto, whatever the body's state: there was nothing to read into
        ready = self._ready_in_frame()
        if not ready:
            return None
        conn = self._conn
        if conn.pos < conn.filled:
            n = min(_len(buf), ready, conn.filled - conn.pos)
            buf[:n] = memoryview(conn.buf)[conn.pos : conn.pos + n]
            conn.handed_out(n)
        else:
            if conn.sock is None:
                return None
            n = conn.sock.readinto(buf if _len(buf) <= ready else memoryview(buf)[:ready])
            if not n:
                return None
        conn.streak += n
        return self._count(n)

    def _ready_in_frame(self):
        # The body bytes the current frame can still hand out without waiting, past the next chunk-size line when
        # that is due and here; 0 when the read must take the awaited way: a decoder, the end of the body, a size
        # line not all here, or FAIR_SHARE bytes without a wait (the awaited way lets others run).
        if self._decoder is not None or self._conn.streak >= _FAIR_SHARE:
            return 0
        if self._remaining > 0:
            return self._remaining
        if not self._chunked or self._eof:
            return 0
        return self._size_line_in_place()

    def _size_line_in_place(self):
        # The next chunk's size, parsed in place from a "[CRLF]hex[;ext]CRLF" line already in the read-ahead (or
        # brought by reads that never wait), so chunked bodies allocate nothing per chunk either; 0 when it is not
        # all here, is the last chunk or looks unusual in any way (_next_chunk then reads it the slow way). No try
        # (docs/design.md: frames): a reset raises the socket's OSError, which readinto reports.
        conn = self._conn
        buf = conn.buf
        if buf is None or self._remaining == _TRAILERS_DUE:
            return 0
        if conn.pos == conn.filled and conn.sock is not None:
            conn.pos = conn.filled = 0
            # First no more than a whole last chunk, "[CRLF]0CRLFCRLF": a read for more would read again, and a reset
            # right behind the body would take the line with it (Connection._read_once). A longer line is no last one.
            last = _LAST_CHUNK if self._remaining == _CRLF_DUE else _LAST_CHUNK - 2
            filled = conn.sock.readinto(buf, last) or 0
            if filled == last and buf[last - 5] != 48 and buf.find(b"\n", last - 4, last) < 0:
                if last == _LAST_CHUNK and buf[last - 1] == 13:  # "\r\nhhhh\r" (a 4 KB chunk or more): its "\n", read
                    if conn.sock.readinto(buf, 1):  # in place of the CRLF's CR and moved behind, leaves no view
                        buf[last] = buf[0]
                        filled += 1
                    buf[0] = 13
                else:
                    filled += conn.sock.readinto(memoryview(buf)[last:]) or 0
            conn.filled = filled
        i = conn.pos
        if self._remaining == _CRLF_DUE:
            if conn.filled - i < 2 or buf[i] != 13 or buf[i + 1] != 10:
                return 0
            # taken now, whatever follows: it comes with the data, the size line often later
            conn.pos = i = i + 2
            self._remaining = 0
        end = buf.find(b"\n", i, conn.filled)
        n = _chunk_size(buf, i, end)
        if n:
            conn.pos = end + 1
            self._remaining = n
        return n

    def readinto(self, buf):
        """Read up to len(buf) bytes of body into buf; 0 at the end. (awaitable: the response's one _BodyRead,
        which allocates nothing while the read size repeats)"""
        return self._body_read(buf, 0)

    def _body_read(self, buf, n):
        # the _BodyRead for a read into buf (or, buf None, of n bytes) to be done when it runs: the response's own,
        # unless that one is still out (made and not yet awaited, as with gather()): then one of its own
        read = self._read
        if read is None or read.state:
            read = self._read = _BodyRead(self)
        read.buf = buf
        read.want = n
        read.state = _TO_RUN
        return read

    def _read_now(self, read):
        # the read that never waits (readinto_nowait(read.buf), or read_nowait(read.want)); a reset is a
        # ClientPayloadError. Two arguments, a try that only returns and a handler that binds no name: the frame
        # stays off the heap (docs/design.md: frames).
        try:
            return self.readinto_nowait(read.buf) if read.buf is not None else self.read_nowait(read.want)
        except OSError:
            pass
        self._cut_short("connection error")

    def _readinto_slowly(self, buf):
        # the generator for a read into buf that needs one: a decoder, framing, the end of the body
        return self._decoder.decode_into(buf) if self._decoder is not None else self._readinto_framed(buf)

    def _count(self, n):
        # n body bytes were read out of the current frame (a chunk, or the whole body)
        self.total_bytes += n
        if self._chunked:
            self._remaining = self._remaining - n or _CRLF_DUE
        elif not self._until_close:
            self._remaining -= n
            if not self._remaining:
                self._body_ended(True)
        return n

    def _cut_short(self, reason):
        # A reset mid-body must not escape as a bare OSError, past `except aiohttp.ClientError`: it is a body cut
        # short like any other. The connection goes.
        self._eof = True
        self._let_go(False)
        self._failure = errors.ClientPayloadError("response payload is not completed (%s)" % (reason,))
        raise self._failure

    async def _readinto_framed(self, buf):
        try:
            remaining = self._remaining
            if remaining <= 0:
                if self._eof or not self._chunked:
                    return 0
                remaining = await self._next_chunk()
                if not remaining:
                    return 0
            conn = self._conn
            if conn.pos < conn.filled:  # read-ahead bytes
                n = min(_len(buf), remaining, conn.filled - conn.pos)
                buf[:n] = memoryview(conn.buf)[conn.pos : conn.pos + n]
                conn.handed_out(n)
            else:
                if conn.sock is None:
                    raise errors.ServerDisconnectedError("connection closed")
                n = await conn.recv(buf if _len(buf) <= remaining else memoryview(buf)[:remaining])
                if not n:
                    # Over TLS only the server's close_notify ends a body that ends with the connection: a TCP end
                    # without one may be a truncation (RFC 9110 section 9.8)
                    if self._until_close and (conn.wire is None or conn.wire.notified):
                        self._body_ended(False)
                        return 0
                    self._eof = True
                    self._let_go(False)
                    why = "connection closed early"
                    if self._until_close:  # (a TLS one, without its close_notify)
                        why = "TLS connection closed without close_notify"
                    raise errors.ClientPayloadError("response payload is not completed (%s)" % why)
            return self._count(n)
        except OSError as e:
            self._cut_short(e)
        except Exception as e:  # (not `except errors.X`: an exception passing by would make the classes)
            if errors.kind_of(e, "ClientPayloadError"):
                self._failure = e  # (resp.content.exception())
            if not errors.kind_of(e, "ServerDisconnectedError") or self._conn.sock is None:
                raise  # a ServerDisconnectedError with no socket: this response was released, or its session closed
            self._cut_short(e)  # the body ended inside a chunk-size line or the trailers

    async def readany(self):
        return await self.read(_READ_ALL_PIECE)


class ClientResponse(StreamReader):
    method = "GET"
    status = 0
    reason = ""
    version = "HTTP/1.1"  # as the status line says
    headers = None
    _reusable = True  # the connection may serve another request once the body is read
    _released = False
    _in_context = False  # inside `async with`, whose end releases it
    _body = None  # the whole body, once read() read it
    _decoder = None  # (StreamReader's, again: read per chunk, found here one class sooner)

    def __init__(self, session, method, url, conn):
        self._session = session
        if method != "GET":
            self.method = method
        self.url = url
        self._conn = conn

    async def _start(self, deadline):
        # The head, then the body's framing. deadline: the request's own (ClientTimeout.total), back in force once
        # the head is read (the head has a deadline of its own, see ClientSession._send).
        conn = self._conn
        version, self.status, self.reason, headers = await read_head(conn)
        if version != "HTTP/1.1":
            self.version = version
        if conn.deadline is not deadline:
            conn.deadline = deadline
        self.headers = headers
        status = self.status
        if version != "HTTP/1.1" or "close" in headers.tokens("Connection") or status == 101:
            self._reusable = False  # (101: the connection now speaks another protocol)
        bodyless = self.method == "HEAD" or status in (204, 304) or status == 101
        length, chunked = _framing(headers, status, bodyless, version)
        if chunked and "content-length" in headers:
            self._reusable = False  # chunked wins (RFC 9112 section 6.3), but the sender is not to be trusted further
        self._set_framing(length, chunked)
        if conn.chunked != chunked:
            conn.chunked = chunked
        conn.handed_out(0)
        if self._session._auto_decompress and not bodyless:
            coding = _coding(headers, status)  # one it can't undo is refused, even on an empty body
            if coding is not None and not self._eof:
                from . import compression

                self._decoder = compression.Inflate(self, coding)
        if self._eof:
            self._let_go(True)

    def __getattr__(self, name):
        # content, content_length, content_type, charset, ok, closed, connection, real_url: computed, as aiohttp's
        # properties are. (A property would make every attribute store on a response, several per chunk read, look
        # through its classes first.)
        if name == "content":  # (aiohttp/streams.py, loaded on first use; kept, so asked for once)
            from . import streams

            content = self.content = streams.Content(self)
            return content
        if name == "real_url":  # (the fragment is never sent, so the URL asked for is the one answered)
            return self.url
        if name == "ok":
            return self.status < 400
        if name == "closed":
            return self._released
        if name == "connection":  # (as aiohttp's: None once the response let it go)
            return None if self._released else self._conn
        if name == "content_length":
            # as it frames the body ("2, 2" is 2); None when it does not (chunked wins over a Content-Length sent with
            # it) or can't be read (a HEAD answer's is not checked)
            try:
                return None if self._chunked else _content_length(self.headers, self.status)
            except Exception:
                return None
        if name == "content_type":  # the media type alone, lower case; aiohttp's default when none is sent
            return self.headers.get("Content-Type", "application/octet-stream").split(";", 1)[0].strip(" \t").lower()
        if name == "charset":  # the Content-Type's charset parameter as sent, or None
            content_type = self.headers.get("Content-Type", "")
            i = content_type.lower().find("charset=")
            return content_type[i + 8 :].split(";", 1)[0].strip(" \t\"'") if i >= 0 else None
        if name == "history":  # no redirect led here (client.py sets the redirects that did)
            return ()
        raise AttributeError(name)

    def _let_go(self, reusable):
        # The request is over: its body was read to the end (reusable), or its connection can't be trusted further
        if self._released:
            return
        reusable = reusable and self._reusable
        try:
            self._released = True
        except MemoryError:  # no room for one more attribute: the connection goes all the same, and is not reused
            reusable = False  # (a second release then finds it closed already)
        self._session._done_with(self._conn, reusable)

    def release(self):
        # Closing is the only safe choice for a body that was not read to its end. -> an awaitable that is done, so
        # `await resp.release()` (aiohttp 2's coroutine, still common) works as aiohttp 3's does.
        self._let_go(False)
        return ()

    close = release

    def turn(self):
        # async, for a reader that goes straight(), after went_straight(): once the fair share is read, its turn
        # (other tasks run, the request's deadline is checked); when the socket ran dry, a wait for it (its read
        # timeout armed); else done at once. An awaited read would take the turn or the wait through every layer of
        # a read: here it costs little. (On ClientResponse: StreamReader's table is full, see docs/design.md.)
        conn = self._conn
        if conn.streak >= _FAIR_SHARE:
            return conn.take_turn()
        if conn.streak == _DRY:
            conn.streak = 0  # (others run while it waits)
            return conn.wait()
        return ()

    def read(self, n=-1):
        """The whole body as bytes (resp.read(), again on every call), or up to n bytes of it: b"" at the end.
        (awaitable) Up to n bytes: the bytes the socket makes, with no buffer filled and copied, when they are
        already here or the read only waits for them (as readinto, the awaitable is the response's _BodyRead)."""
        return self._body_read(None, n) if n > 0 else self._read_whole(n)

    async def _read_whole(self, n=-1):
        # read(n) when the bytes are not simply on their way (framing, a decoder, the end), and the whole body. That
        # one is kept, and answers read(), text() and json() again, as aiohttp keeps it.
        if n >= 0:
            if not n:
                return b""
            conn = self._conn
            if conn.streak >= _FAIR_SHARE and conn.sock is not None:
                # after 64 KB without a wait: the turn first, then the bytes the socket makes (one allocation, made
                # before a byte is read) rather than a buffer filled and copied (two, the second after the read)
                await conn.take_turn()
                data = self.read_nowait(n)
                if data:
                    return data
            buf = fitting_bytearray(n)  # (up to n bytes are asked for: fewer where the heap is cut into pieces)
            got = await self._readinto_slowly(buf)
            return bytes(buf) if got == n else bytes(memoryview(buf)[:got])
        if self._body is not None:
            return self._body
        if self._decoder is None and not self._chunked and not self._until_close and _heap_holds(self._remaining):
            # One buffer of what is still to come (not of Content-Length: a HEAD answer has one and no body)
            n = self._remaining
            buf = bytearray(n)
            view = memoryview(buf)
            got = 0
            while got < n:
                k = await self.readinto(view[got:])
                if not k:
                    break
                got += k
            body = bytes(buf) if got == n else bytes(view[:got])
        else:
            pieces = []
            buf = bytearray(_READ_ALL_PIECE)
            while True:
                k = await self.readinto(buf)
                if not k:
                    break
                pieces.append(bytes(memoryview(buf)[:k]))
            body = b"".join(pieces)
        self._body = body
        return body

    async def text(self, encoding=None, errors="strict"):
        body = self._body if self._body is not None else await self.read()
        return await self._decode(body, encoding, errors)

    async def _decode(self, body, encoding, errors):
        # In the charset the Content-Type names, UTF-8 when it names none. MicroPython decodes UTF-8 only (a charset
        # given to decode() is ignored), and takes overlong forms, surrogates and code points past U+10FFFF too: any
        # other charset, and a body with a byte such a sequence starts with, go to charset.py.
        server_charset = None if encoding else self.charset
        named = encoding or server_charset
        if not named or named.lower() in ("utf-8", "utf8"):
            for lead in b"\xc0\xc1\xe0\xed\xf0\xf4\xf5\xf6\xf7":  # (utf8.lax's; one bytes: a tuple is heap in ROMFS)
                if bytes((lead,)) in body:  # (bytes in bytes: a search in C; an int is compared with each byte in turn)
                    break
            else:
                try:
                    return body.decode()
                except UnicodeError:
                    pass
        from . import charset

        return await charset.decode(body, encoding, server_charset, errors)  # (it lets the loop turn as it goes)

    async def json(self, *, encoding=None, loads=None, content_type="application/json"):
        # aiohttp's, but JSON under another Content-Type (text/plain from a raw file host) decodes, as it did with
        # MicroPythonOS's aiohttp: only a body that is no JSON (an empty one too) then is a ContentTypeError, a
        # ClientResponseError (a login page's is no decoder's ValueError past `except aiohttp.ClientError`).
        # content_type=None: the decoder's own error. An empty body of the expected type is None.
        mimetype = self.content_type
        if content_type == "application/json":  # or a JSON-based type, application/vnd.api+json (as aiohttp takes)
            expected = mimetype == content_type or mimetype.startswith("application/") and mimetype.endswith("+json")
        else:
            expected = not content_type or content_type in mimetype
        body = self._body if self._body is not None else await self.read()
        if body and not body.isspace():  # (not strip(): it would copy the body, beside the body and what it decodes to)
            if loads is None:
                from json import loads
            try:
                return loads(await self._decode(body, encoding, "strict"))
            except ValueError:
                if expected:
                    raise
        elif expected:
            return None
        raise errors.ContentTypeError(self.status, "Attempt to decode JSON with unexpected mimetype: %s"
                                      % self.headers.get("Content-Type", "").lower(), self.headers)

    def raise_for_status(self):
        if self.status >= 400:
            if not self._in_context:  # inside `async with` the handler may still read what the server said
                self.release()
            raise errors.ClientResponseError(self.status, self.reason, self.headers)

    async def __aenter__(self):
        self._in_context = True
        return self

    def __aexit__(self, exc_type, exc, tb):
        done = self.release()  # (no coroutine to make: see _RequestContext's)
        errors.raise_if_retyped(exc_type is MemoryError, exc)
        return done

    def __repr__(self):
        return "<ClientResponse(%s) [%d %s]>" % (self.url, self.status, self.reason)
