# An aiohttp-compatible async HTTP/1.1 client for MicroPython.
#
# The names follow CPython's aiohttp (ClientSession, resp.status, resp.content.read(n)) so code reads the same.
# What it adds over a one-shot HTTP/1.0 client: keep-alive with a per-session connection pool, chunked and
# close-delimited bodies that fail loudly when cut short, redirects done right, timeouts that cost nothing per
# read, and sockets that are always closed, also when a request is cancelled.
#
# The path of a body byte: socket -> resp.content.readinto(buf) -> the caller's buffer. readinto reads the
# non-blocking socket at once (readinto_nowait) and, when it has nothing, returns the response's one _Read,
# which waits for the socket in the event loop's poller and then reads the same way: no generator per read.
# Bytes that arrived together with the response head or a chunk-size line wait in _Conn.buf and are handed out
# first; heads, chunk lines that come in pieces, decoders and the end of a body go through _Conn.recv().

import asyncio
import io
import socket
import sys
from errno import EINPROGRESS, ETIMEDOUT
from asyncio import core
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

try:
    from _asyncio import Task as _Task  # the native Task (see _Read.__iter__)
except ImportError:
    _Task = None
try:
    import _thread  # host names are looked up on a worker thread where there is one
except ImportError:
    _thread = None

__version__ = "1.0.0"

_BUF = const(512)  # per-connection buffer for heads and chunk-size lines; grows for long header lines
_HEAD_MAX = const(8192)  # a status line or header line longer than this is refused
_HEADERS_MAX = const(100)
_HEAD_TOTAL = const(32768)  # a whole response head larger than this is refused (100 lines of 8 KB won't fit a heap)
_BLOCK = const(1024)  # a head is kept in blocks of about this size (see CIMultiDictProxy)
_FAIR = const(65536)  # bytes read without a wait, after which other tasks get a turn anyway
# Body bytes read since the running task last let others run (see _Conn.recv). One count serves every
# connection: tasks take turns only where they wait, and each wait starts it again. (Event loops on several
# threads would share it too: there it is a rough bound.)
_k = 0
_TICK = const(100)  # watchdog period, ms
_UNBOUNDED = const(0x3FFFFFFF)  # "read until EOF" for close-delimited bodies
_IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
_DECODABLE = ("gzip", "x-gzip", "deflate")  # the Content-Encodings _Inflate reads
_len = len  # a module global is found by hash; a builtin by a search of the builtins table, per call


# The websocket client (aiohttp/websocket.py) is its own module, loaded on first use: a download never pays for it.
# Its names: WSMsgType, WSMessage, WSCloseCode, WSServerHandshakeError, WSMessageTypeError, and these.
_WEBSOCKET_NAMES = ("ClientWebSocketResponse", "WebSocketError", "ClientWSTimeout", "ClientConnectionResetError")


def __getattr__(name):
    if name[:2] != "WS" and name not in _WEBSOCKET_NAMES:
        raise AttributeError(name)
    # (as asyncio's own lazy names: `from . import websocket` would ask this function for "websocket" first)
    value = globals()[name] = getattr(__import__("websocket", globals(), None, True, 1), name)
    return value


class ClientError(Exception):
    pass


class ClientConnectionError(ClientError):
    # .errno carries the socket's error number when there is one, as a plain OSError would.
    def __init__(self, msg, errno=None):
        super().__init__(msg)
        self.errno = errno


class ServerDisconnectedError(ClientConnectionError):
    pass


class ServerTimeoutError(ClientConnectionError):
    pass


class ClientSSLError(ClientConnectionError):
    pass


class ClientConnectorCertificateError(ClientSSLError):
    # the server's certificate did not verify against the configured CA: trying again cannot help
    pass


class ClientConnectorDNSError(ClientConnectionError):
    # A host name that could not be looked up; .errno is the resolver's code when it gave one
    pass


class ClientPayloadError(ClientError):
    pass


class ClientResponseError(ClientError):
    def __init__(self, status, message="", headers=None):
        super().__init__("%d, message=%r" % (status, message))
        self.status = status
        self.message = message
        self.headers = headers


class TooManyRedirects(ClientResponseError):
    pass


class InvalidURL(ValueError):
    # A bad URL given by the caller: a ValueError, as bad input is. (aiohttp makes it a ClientError too;
    # MicroPython refuses a class with two built-in exception bases, so here it is a ValueError only.)
    pass


class InvalidUrlRedirectClientError(ClientResponseError):
    # A redirect whose Location is no URL we can follow (another scheme, a space, two of them...): the
    # server's answer was bad, so this is the ClientError callers catch, with the status it came with.
    pass


class ClientTimeout:
    # total: whole request incl. body; connect: DNS+TCP+TLS; sock_read: each wait for data (head and body).
    def __init__(self, total=None, connect=None, sock_read=None, sock_connect=None):
        self.total = total
        self.connect = connect if connect is not None else sock_connect
        self.sock_read = sock_read


DEFAULT_TIMEOUT = ClientTimeout(connect=30, sock_read=60)


def _ms(t):
    return None if t is None else int(t * 1000)


class CIMultiDictProxy:
    # Response headers, read-only, with case-insensitive lookup: the head kept as the bytes it arrived in,
    # "\nname:value\n...\n" with names in lower case (as HTTP/2 sends them), in blocks of about _BLOCK bytes that
    # hold whole fields, so that no head needs one long free run of the heap. A typical head is one block.
    # Lookups scan it and decode what they find; a response is asked for a handful.
    def __init__(self, blocks):
        self._blocks = blocks

    def _key(self, k):
        return ("\n%s:" % k.lower()).encode()

    def getall(self, k):
        key = self._key(k)
        out = []
        for t in self._blocks:
            i = t.find(key)
            while i >= 0:
                j = i + len(key)
                i = t.find(b"\n", j)
                out.append(_latin1(t[j:i]))
                i = t.find(key, i)
        return out

    def get(self, k, default=None):
        # the first value of a repeated field, as aiohttp's CIMultiDict answers (getall() gives them all)
        v = self.getall(k)
        return v[0] if v else default

    def tokens(self, k):
        # a list-valued field (Connection, Transfer-Encoding...), which may come in several lines, as its lower-case
        # tokens without parameters: "gzip, Chunked" -> ["gzip", "chunked"]; so "chunkeda" is not "chunked"
        out = []
        for v in self.getall(k):
            for t in v.split(","):
                t = t.split(";", 1)[0].strip().lower()
                if t:
                    out.append(t)
        return out

    def __getitem__(self, k):
        v = self.get(k)
        if v is None:
            raise KeyError(k)
        return v

    def __contains__(self, k):
        key = self._key(k)
        for t in self._blocks:
            if key in t:
                return True
        return False

    def items(self):
        # each name and value decoded on its own, as get() does: one latin-1 field must not change the others
        out = []
        for t in self._blocks:
            for f in bytes(t).split(b"\n"):
                if f:
                    k, _, v = f.partition(b":")
                    out.append((_latin1(k), _latin1(v)))
        return out

    def keys(self):
        return [k for k, v in self.items()]

    def values(self):
        return [v for k, v in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return sum(t.count(b"\n") - 1 for t in self._blocks)

    def __repr__(self):
        return "<CIMultiDictProxy %r>" % self.items()


def _check_text(what, s):
    if not isinstance(s, str):
        raise TypeError("%s must be str, not %s" % (what, type(s).__name__))
    for c in "\r\n\0":
        if c in s:
            raise ValueError("%s contains a forbidden character (CR, LF or NUL): %r" % (what, s))


_TCHAR = "!#$%&'*+-.^_`|~"


def _one_line(e):
    # an exception's text on one line: mbedTLS's reasons come with line breaks around them
    return " ".join(str(e).split())


def _latin1(line):
    # Header bytes that are not UTF-8 (a latin-1 filename, say) raised UnicodeError and lost the whole
    # response; MicroPython has no latin-1 codec, so map bytes to code points by hand. Rare path.
    try:
        return line.decode()
    except UnicodeError:
        return _from_latin1(line)


def _from_latin1(line):
    out = bytearray()  # each byte from 0x80 up becomes its code point's two UTF-8 bytes
    for b in line:
        if b < 0x80:
            out.append(b)
        else:
            out.append(0xC0 | b >> 6)
            out.append(0x80 | b & 0x3F)
    return out.decode()


def check_headers(headers):
    """Refuse header names/values that could inject a header or a request (CR, LF, NUL, bad names)."""
    if not headers:
        return
    for k, v in headers.items():
        _check_text("header name", k)
        # A name must be an RFC 9110 token: besides space, ":" and tab, other control characters (\x01, DEL)
        # and separators like "(" went out as they were.
        if not k or any(not (c.isalpha() or c.isdigit()) and c not in _TCHAR or ord(c) > 126 for c in k):
            raise ValueError("invalid header name: %r" % k)
        _check_text("header %s" % k, v if isinstance(v, str) else str(v))


def split_url(url):
    """-> (scheme, host, port, target). Raises InvalidURL naming the problem."""
    if not isinstance(url, str):
        raise InvalidURL("URL must be str, not %s" % type(url).__name__)
    for c in url:
        if c <= " " or c == "\x7f":
            raise InvalidURL("URL contains whitespace or a control character: %r" % url)
    i = url.find("://")
    if i < 0:
        raise InvalidURL("URL has no scheme: %r" % url)
    scheme = url[:i].lower()
    if scheme not in ("http", "https"):
        raise InvalidURL("unsupported URL scheme %r (only http and https)" % scheme)
    rest = url[i + 3 :]
    j = len(rest)
    for c in "/?#":
        k = rest.find(c)
        if 0 <= k < j:
            j = k
    netloc, target = rest[:j], rest[j:]
    target = target.split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    if "@" in netloc:
        raise InvalidURL("credentials in the URL are not supported: %r" % url)
    port = 443 if scheme == "https" else 80
    if netloc.startswith("["):  # IPv6 literal
        k = netloc.find("]")
        if k < 0:
            raise InvalidURL("bad IPv6 address in %r" % url)
        host, tail = netloc[1:k], netloc[k + 1 :]
    else:
        host, _, p = netloc.partition(":")
        tail = ":" + p if _ else ""
    if tail:
        p = tail[1:]
        if tail[0] != ":" or not p.isdigit() or not 0 < int(p) < 65536:
            raise InvalidURL("bad port in URL: %r" % url)
        port = int(p)
    if not host:
        raise InvalidURL("URL has no host: %r" % url)
    return scheme, host, port, target


def join_url(base, loc):
    """Resolve a Location header against the URL it came from, as RFC 3986 section 5.2 does: absolute,
    //host, /path, relative, ?query, with "." and ".." segments taken out. The fragment is dropped: it is
    never sent, and a Location of "#part" alone means the same resource."""
    loc = loc.split("#", 1)[0]
    if _absolute(loc):
        return loc  # split_url says whether it is a scheme we speak
    scheme, host, port, target = split_url(base)
    if loc.startswith("//"):
        return scheme + ":" + loc
    path = target.split("?", 1)[0]
    if not loc:
        loc = target
    elif loc.startswith("?"):
        loc = path + loc
    elif not loc.startswith("/"):
        loc = path[: path.rfind("/") + 1] + loc
    path, q, query = loc.partition("?")
    return "%s://%s%s%s%s" % (scheme, _hostport(scheme, host, port), _dots(path), q, query)


def _absolute(url):
    # whether url starts with a scheme, "http:" or "mailto:" ("/a/http://b" does not)
    i = url.find(":")
    return i > 0 and url[0].isalpha() and all(c.isalpha() or c.isdigit() or c in "+-." for c in url[1:i])


def _dots(path):
    # "/a/b/../c/./d" -> "/a/c/d" (RFC 3986 remove_dot_segments, for a path that starts with "/")
    segs = path.split("/")
    if "." not in segs and ".." not in segs:
        return path
    out = []
    for seg in segs[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    if segs[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(out)


_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def _quote(v):
    # one name or value, form-encoded: letters, digits and -._~ as they are, space as "+", every other byte of
    # its UTF-8 as %XX, so no value can add a field ("&"), end the query ("#") or a line (CR LF)
    v = (v if isinstance(v, str) else str(v)).encode()
    return "".join(chr(b) if b in _SAFE else "+" if b == 32 else "%%%02X" % b for b in v)


def _form(pairs):
    # data= or params= (a dict, or (name, value) pairs) as application/x-www-form-urlencoded text
    if hasattr(pairs, "items"):
        pairs = pairs.items()
    return "&".join("%s=%s" % (_quote(k), _quote(v)) for k, v in pairs)


def _hostport(scheme, host, port):
    h = "[%s]" % host if ":" in host else host
    return h if port == (443 if scheme == "https" else 80) else "%s:%d" % (h, port)


def tls_context(ca=None):
    """A client SSLContext. Without `ca` the server is not verified (MicroPythonOS devices carry no CA bundle);
    with `ca` (DER bytes, PEM text, or a path to either) verification is required. Make it once and pass that
    one (ClientSession(ssl=...) or each request's ssl=): connections are pooled per context, as in aiohttp."""
    import tls

    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.verify_mode = tls.CERT_NONE
        return ctx
    if isinstance(ca, str) and "-----BEGIN" not in ca:
        with open(ca, "rb") as f:
            ca = f.read()
    if isinstance(ca, str):
        ca = ca.encode()
    if b"-----BEGIN" in ca:  # mbedTLS here wants DER: decode the first PEM block
        import binascii

        body = ca.split(b"-----", 3)[2] if ca.count(b"-----") >= 4 else b""
        ca = binascii.a2b_base64(body.replace(b"\n", b"").replace(b"\r", b""))
    ctx.load_verify_locations(ca)  # positional: this port takes no keywords here
    ctx.verify_mode = tls.CERT_REQUIRED
    return ctx


# --- Host names -> addresses --------------------------------------------------------------------------------
# (All of it here, in one place: it moves into a `connection` module.) socket.getaddrinfo blocks its thread for
# as long as a lookup takes, seconds for a name that does not exist, and on an ESP32 the event loop's thread is
# the UI's. Where _thread exists a worker thread looks the name up while the loop polls; where it does not, the
# loop does. An address is kept for _DNS_TTL_MS and dropped when connecting to it fails.

_getaddrinfo = socket.getaddrinfo  # tests put a slow resolver here: the built-in socket module can't be patched
# A minute: a device that moves to another network follows its hosts' new addresses within one, and a batch of
# downloads (the App Store's icons) costs one lookup. getaddrinfo does not say the record's own TTL.
_DNS_TTL_MS = 60000
_DNS_WORKERS = const(2)  # lookup threads at once: an ESP32 runs only a few threads, and a stuck one can't be killed
_DNS_POLL_MS = const(10)  # how often the event loop looks whether a lookup has finished
# glibc's resolver loads NSS modules (mdns4_minimal takes about 80 KB of stack) and segfaults on a small stack
_DNS_STACK = 256 * 1024 if sys.platform in ("linux", "darwin") else 16 * 1024
_dns = {}  # (host, port) -> (addrinfo, ticks_ms when looked up)
_lookups = []  # lookups whose thread the event loop has not yet seen finish


class _Lookup:
    # One getaddrinfo on a worker thread. Every attribute is set here, so the thread only replaces values and never
    # grows the table the event loop reads meanwhile (the unix port runs threads without a global lock).
    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.answer = None
        self.error = None
        self.done = False

    def run(self):
        try:
            self.answer = _getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except Exception as e:
            self.error = e
        finally:
            self.done = True


def _cached(host, port):
    hit = _dns.get((host, port))
    if hit is not None and ticks_diff(ticks_ms(), hit[1]) < _DNS_TTL_MS:
        return hit[0]
    return None


def _finish(lookup):
    # A lookup's thread is done: its worker is free again and its address remembered, also when nobody waits for
    # it any more. -> the address to connect to, or None
    if lookup in _lookups:
        _lookups.remove(lookup)
    answer = lookup.answer or ()
    ai = answer[0] if answer else None
    for r in answer:
        if r[0] == socket.AF_INET:  # IPv4 first: test servers and most device networks listen there
            ai = r
            break
    if ai is not None:
        if _len(_dns) >= 8:
            _dns.clear()
        _dns[(lookup.host, lookup.port)] = (ai, ticks_ms())
    return ai


def _start_lookup(host, port):
    # -> the lookup of host:port: the one under way, a new one on a free worker thread (or done at once where
    # there are no threads, or for an address, which needs no lookup), or None while every worker is busy
    for lookup in _lookups[:]:
        if lookup.host == host and lookup.port == port:
            return lookup
        if lookup.done:
            _finish(lookup)  # nobody waits for it any more
    lookup = _Lookup(host, port)
    if _thread is None or ":" in host or host.replace(".", "").isdigit():
        lookup.run()
    elif _len(_lookups) >= _DNS_WORKERS:
        return None
    else:
        stack = _thread.stack_size(_DNS_STACK)  # the setting is global: put it back after
        try:
            _thread.start_new_thread(lookup.run, ())
            _lookups.append(lookup)
        except (OSError, MemoryError):  # no thread to be had: better a lookup here than none
            lookup.run()
        finally:
            _thread.stack_size(stack)
    return lookup


def _dns_error(host, e):
    # A failed lookup. Its code: ESP32 raises OSError(-202), the unix port OSError("[addrinfo error -3]").
    code = e.args[0] if e.args else None
    if isinstance(code, str):
        try:
            code = int(code.rstrip("]").rsplit(" ", 1)[-1])
        except ValueError:
            code = None
    return ClientConnectorDNSError("cannot resolve %s: %s" % (host, e), code)


async def _resolve(host, port, connect_ms, end):
    # -> the addrinfo of host:port, known within connect_ms and before the ticks_ms end (None: no limit)
    ai = _cached(host, port)
    if ai is not None:
        return ai
    if connect_ms is not None:
        limit = ticks_add(ticks_ms(), connect_ms)
        end = limit if end is None or ticks_diff(limit, end) < 0 else end
    lookup = _start_lookup(host, port)
    while lookup is None or not lookup.done:
        if end is not None and ticks_diff(ticks_ms(), end) >= 0:
            # its thread finishes on its own; what it finds is kept for the next request
            raise ServerTimeoutError("looking up %s took longer than the connect timeout" % host, ETIMEDOUT)
        await asyncio.sleep_ms(_DNS_POLL_MS)
        if lookup is None:
            lookup = _start_lookup(host, port)
    ai = _finish(lookup)
    if isinstance(lookup.error, OSError):
        raise _dns_error(host, lookup.error)
    if lookup.error is not None:
        raise lookup.error
    if ai is None:
        raise ClientConnectorDNSError("cannot resolve %s: no address" % host)
    return ai


def _forget(host, port):
    _dns.pop((host, port), None)


# --- end of host names -> addresses ------------------------------------------------------------------------------


def _hex(b, k, j):
    # The chunk size in the line b[k:j+1] ("hex\r\n" or "hex;ext\r\n"), or 0 if it is the last chunk or looks
    # unusual in any way: the slow path then reads the line again and does the full checks.
    if j < 0 or j - k > 9:
        return 0
    n = 0
    while k < j:
        ch = b[k]
        if 48 <= ch <= 57:
            n = n * 16 + ch - 48
        elif 97 <= ch <= 102:
            n = n * 16 + ch - 87
        elif 65 <= ch <= 70:
            n = n * 16 + ch - 55
        else:
            break
        k += 1
    # The digits must end the line ("...\r\n") or start an extension (";...")
    if b[j - 1] != 13 or not (k == j - 1 or b[k] == 59):
        return 0
    return n


class _Conn:
    # One TCP (or TLS) connection. recv() tries the non-blocking socket first and only parks the task in the
    # event loop's poller when there is nothing to read (arm(), also used by _Read). While parked, `dl` holds a
    # deadline that the session's watchdog enforces, so a timeout costs nothing when data keeps coming.
    # Defaults live on the class (here and in StreamReader, ClientResponse): MicroPython has no __slots__, every
    # attribute an instance sets takes a slot in its own table, and these objects live as long as a request.
    s = None
    buf = None  # for heads and chunk-size lines; made when needed, see took(). Views of it are made per use: a
    # view kept here would be one more attribute, and the table grows in steps of two (see __init__)
    p = e = 0  # buffered, unread bytes are buf[p:e]
    tmo = None  # ms allowed for the current wait (connect or read phase)
    dl = None  # deadline of the wait in progress
    end = None  # deadline of the whole request (ClientTimeout.total)
    task = None
    expired = False
    keep_buf = False  # True while a chunked body streams: its size lines need the buffer
    tcp = None  # a TLS connection's TCP socket: MicroPython's TLS socket lets go of it unclosed if its handshake fails

    def __init__(self, key):
        # A fresh connection ends up with 8 attributes (key, s, buf, p, e, tmo, dl, task): the table MicroPython
        # grows to 8 entries, not 10 (32 bytes per connection on the unix port, 16 on an ESP32). A TLS one has 9
        # (tcp): 16 bytes more beside the 20-40 KB of TLS buffers.
        self.key = key

    def open(self, ai):
        scheme, host, port, ctx = self.key
        s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2] if len(ai) > 2 else 0)
        self.s = s  # registered before anything can fail, so close() always finds it
        s.setblocking(False)
        try:  # TCP_NODELAY, as aiohttp: a write after a write (a POST's body, a websocket frame's next block) goes
            # out at once, not held ~40 ms for the peer's delayed ACK. (IPPROTO_TCP is 6 everywhere; the unix port
            # names neither, where TCP_NODELAY is 1.)
            s.setsockopt(6, getattr(socket, "TCP_NODELAY", 1), 1)
        except OSError:
            pass
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:  # the connect finishes in the background
                _forget(host, port)
                raise
        if scheme == "https":
            self.tcp = s
            self.s = ctx.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
            self.s.setblocking(False)

    def close(self):
        for s in (self.s, self.tcp):  # (closing the TCP socket again after its TLS socket did is harmless)
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.s = None
        if self.tcp is not None:
            self.tcp = None
        if self.buf is not None:  # bytes that came before the close are not handed out after it (release())
            self.buf = None
            self.p = self.e = 0

    def arm(self, write):
        # Before a wait: the deadline the watchdog enforces, and the socket in the event loop's poller for the
        # running task. Then the task yields, and woke() follows if the wait ends in an exception.
        end = self.end
        if self.tmo is not None or end is not None:
            dl = end if self.tmo is None else ticks_add(ticks_ms(), self.tmo)
            if end is not None and ticks_diff(end, dl) < 0:
                dl = end
            self.dl = dl
            self.task = core.cur_task
        if write:
            core._io_queue.queue_write(self.s)
        else:
            core._io_queue.queue_read(self.s)

    def woke(self, e):
        # A wait ended in e: the watchdog's cancellation is a timeout
        self.dl = None
        # (asyncio throws the class CancelledError, a generator gets an instance)
        if self.expired and (e is core.CancelledError or isinstance(e, core.CancelledError)):
            raise ServerTimeoutError("timed out", ETIMEDOUT)
        raise e

    def _park(self, write):
        # async (a generator, like asyncio's own streams): wait until the socket is ready
        self.arm(write)
        try:
            yield
        except BaseException as e:
            self.woke(e)
        self.dl = None

    def take_turn(self):
        # async: data may always be ready on a fast link (or a decoder may never run dry): let other tasks (UI,
        # watchdog) run after every _FAIR bytes, and enforce the whole-request deadline here, since no wait may
        # ever arm it. By bytes, not reads: a 64 KB chunk_size would otherwise hold the loop for megabytes.
        global _k
        yield from core.sleep_ms(0)
        _k = 0
        if self.end is not None and ticks_diff(ticks_ms(), self.end) >= 0:
            raise ServerTimeoutError("request took longer than its total timeout", ETIMEDOUT)

    def recv(self, mv):
        # async: read at most len(mv) bytes from the socket; 0 means the peer closed.
        global _k
        s = self.s
        if _k >= _FAIR:
            yield from self.take_turn()
            s = self.s
        while True:
            if s is None:
                raise ServerDisconnectedError("connection closed")
            n = s.readinto(mv)
            if n is not None:
                _k += n
                return n
            yield from self._park(False)
            _k = 0  # others ran while this task waited
            s = self.s

    def send(self, data):
        # async: write all of data (this also completes a pending connect or TLS handshake)
        mv = memoryview(data)
        off = 0
        while off < len(mv):
            if self.s is None:
                raise ServerDisconnectedError("connection closed")
            try:
                n = self.s.write(mv[off:])
            except ValueError as e:
                # mbedTLS reports a certificate that did not verify as ValueError, with the reason as its text
                raise ClientConnectorCertificateError("TLS certificate verification failed: %s" % _one_line(e))
            if n is None:
                yield from self._park(True)
            else:
                off += n

    def took(self, n):
        # n buffered bytes were handed out. Once a length-framed body has nothing buffered left, the buffer is
        # let go: a download then holds no head buffer while its body streams (the next head makes a new one).
        self.p += n
        if self.p == self.e and not self.keep_buf:
            self.buf = None
            self.p = self.e = 0

    def fill(self):
        # async: read more bytes into buf (compacting or growing it); returns how many arrived
        if self.buf is None:
            try:
                self.buf = bytearray(_BUF)
            except MemoryError:  # no free run that long in a fragmented heap: start small, grow per long line
                self.buf = bytearray(64)
        buf, p, e = self.buf, self.p, self.e
        if p:
            buf[: e - p] = memoryview(buf)[p:e]
            self.e = e = e - p
            self.p = 0
        if e == len(buf):
            if e >= _HEAD_MAX:
                raise ClientResponseError(0, "header or chunk line longer than %d bytes" % _HEAD_MAX)
            nb = bytearray(2 * e)
            nb[:e] = buf
            self.buf = buf = nb
        n = yield from self.recv(memoryview(buf)[e:])
        self.e += n
        return n

    def line_end(self):
        # async: where the next line ends in buf (just past its "\n"), the line left unread; 0 at EOF
        scan = 0  # bytes already searched, relative to p
        while True:
            # Search in place: copying the buffered rest with bytes(mv[...]) to find "\n" cost up to a whole
            # buffer of garbage per line, i.e. twice per chunk of a chunked body.
            i = self.buf.find(b"\n", self.p + scan, self.e) if self.buf is not None else -1
            if i >= 0:
                return i + 1
            scan = self.e - self.p
            if not (yield from self.fill()):
                if self.e > self.p:
                    raise ServerDisconnectedError("connection closed inside a line")
                return 0

    def readline(self):
        # async: one line (bytes, with its line ending), or b"" at EOF
        end = yield from self.line_end()
        if not end:
            return b""
        line = bytes(memoryview(self.buf)[self.p : end])
        self.p = end
        return line


class _Read:
    # The awaitable readinto(buf) and read(n) return: one per response, reused by every read. A generator per
    # read (three while it waits: the read, recv and _park) was garbage at every chunk, and read(n) filled a
    # buffer of n bytes and copied it out as well. Like a coroutine it does nothing until it runs (awaited, or
    # by the task create_task() or wait_for() made for it): then it reads what the socket holds, and
    # - has the result: awaiting it raises StopIteration(n). A new one per call would be ~100 B of garbage, and
    #   one kept and raised again grows its traceback: it is kept while n repeats (a full buffer) and raised
    #   from C by a finished Task where asyncio's Task is native, or from here with its traceback reset first,
    #   as asyncio's own sleep_ms() does. read(n)'s bytes get a StopIteration of their own, let go once raised.
    # - found nothing: it registers the socket with the event loop's poller for the task it runs in, yields, and
    #   reads again once woken.
    # - or meets anything else (the end of the body, a chunk line split across reads, a decoder, 64 KB without a
    #   wait, nothing after a wait: the end of the connection) and continues in the generator that handles it.
    n = -1  # the count exc carries; -1: exc carries bytes
    exc = None
    st = 0  # 0: idle; 5: to run; 1: to wait; 2: waiting; 3: continuing in g; 4: result in exc
    g = None
    buf = None  # the caller's buffer for readinto(buf); None for read(want)
    want = 0
    _t = None  # the finished Task (see __iter__)

    def __init__(self, r):
        self.r = r

    def __iter__(self):
        if self.st == 5:
            self._go(False)
        if self.st != 4 or self.n < 0 or _Task is None:
            return self
        # A count awaited where asyncio's Task is native: hand over a finished Task holding exc, which raises it
        # from C, twice as fast as send() (readinto on a fast link is mostly this)
        self.st = 0
        t = self._t
        if t is None:
            t = self._t = _Task(self)
            t.state = False  # done, its waiter told: awaiting it only raises t.data
        t.data = self.exc
        return t

    def send(self, v=None):
        st = self.st
        if st == 5 or st == 2:
            self._go(st == 2)
            st = self.st
        if st == 1:
            self.r._c.arm(False)
            self.st = 2
            return None
        if st == 3:
            return self._on(None)
        if st != 4:
            raise RuntimeError("this read was awaited already")
        e = self.exc
        self.st = 0
        if self.n < 0:
            self.exc = None  # bytes, which this must not keep alive once handed out
        e.__traceback__ = None
        raise e

    __next__ = send

    def throw(self, *exc):
        e = exc[0] if len(exc) == 1 else exc[1]
        if self.g is not None:
            return self._on(e)
        st = self.st
        self._drop()
        if st == 2:
            self.r._c.woke(e)
        raise e

    def close(self):
        g = self.g
        self.g = None
        if self.st == 2:
            self.r._c.dl = None
        self._drop()
        if g is not None:
            g.close()

    def _drop(self):
        # back to idle, holding no buffer and no bytes
        self.st = 0
        self.buf = None
        if self.n < 0:
            self.exc = None

    def _go(self, woken):
        # The read, when this first runs or the poller woke it: a result (st 4), a wait (st 1) or the generator
        # for whatever else it is (st 3). No try here, so this frame stays off the heap (see readinto_nowait).
        global _k
        r = self.r
        c = r._c
        if woken:
            _k = 0  # others ran while this task waited
            c.dl = None
        buf = self.buf
        v = r._try(self)
        if v or v == 0:  # bytes, a count, or 0 for an empty buffer (None and b"": wait)
            self.st = 4
            self.buf = None
            if buf is None or v != self.n:
                self.exc = StopIteration(v)
                self.n = -1 if buf is None else v
        elif not woken and c.p == c.e and c.s is not None and not r._eof and _k < _FAIR and r._dec is None and (
                r._left > 0 or r._chunked):
            self.st = 1
        else:
            self.g = r._slow(buf) if buf is not None else r._read_all(self.want)
            self.st = 3
            self.buf = None

    def _on(self, e):
        # one step of the generator a read continues in
        try:
            if e is None:
                return self.g.send(None)
            return self.g.throw(e)
        except BaseException:  # its result (StopIteration) or its error: this read is over
            self.g = None
            self.st = 0
            raise


class StreamReader:
    # resp.content: the body, framed by Content-Length, chunked encoding, or the end of the connection. A response
    # is its own content (ClientResponse below): one object per request, not two, for as long as the body streams.
    _chunked = _close = _eof = False
    _dec = None  # the decoder of a gzip/deflate body
    _now = None  # the _Read that readinto and read(n) return, made on first use

    def _body(self, length, chunked):
        # the framing the head announced (self._c is the connection)
        self.total_bytes = 0  # as _Conn.k: every read sets it
        if chunked:
            self._chunked = True
            self._left = 0
        elif length is None:
            self._close = True
            self._left = _UNBOUNDED
        else:
            self._left = length
            if not length:
                self._eof = True

    def at_eof(self):
        return self._eof

    async def _next_chunk(self):
        # Called when the current frame is used up: parse the next chunk-size line, or end the body.
        # Each step is recorded as soon as its line is taken: a read cancelled while it waits for the next line
        # (an app's own timeout) leaves a state the next read goes on from.
        c = self._c
        if self._left == -1:  # CRLF after the previous chunk's data
            if (await c.readline()) not in (b"\r\n", b"\n"):
                raise ClientPayloadError("malformed chunked encoding")
            self._left = 0
        if not self._left:
            line = await c.readline()
            if not line:
                raise ClientPayloadError("response payload is not completed (chunked body cut short)")
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                n = -1
            if n < 0:  # int() takes "-1" too: a size below zero read as a count cut the body short
                raise ClientPayloadError("bad chunk size line %r" % line[:40])
            if n:
                self._left = n
                return n
            self._left = -2  # the last chunk: trailers follow
        while True:  # trailers, up to the empty line
            line = await c.readline()
            if not line:
                raise ClientPayloadError("response payload is not completed (no end of trailers)")
            if line in (b"\r\n", b"\n"):
                break
        self._finish(True)
        return 0

    def _finish(self, reusable):
        self._eof = True
        self._left = 0
        if self._dec is None or not reusable:  # (a decoder ends the request once it has decoded the last byte)
            self._done(reusable)

    def readinto_nowait(self, buf):
        """Body bytes that are already here, read into buf without waiting: n > 0 (0 for an empty buf), or None
        when the next read has to wait, or meets the end of the body, a trailer or a content coding (then
        `await readinto(buf)`). DownloadManager's hot loop calls it before awaiting. Allocates nothing, except a
        small view when bytes buffered with a chunk-size line are copied out. A connection reset raises the
        socket's OSError (readinto makes it a ClientPayloadError); release() then closes the connection."""
        # The common case only, a whole buffer straight from the socket, with no try: MicroPython gives a function
        # whose arguments, locals, stack and handlers need more than 11 words its frame from the heap at every
        # call, and one `except ... as e` is enough for that (here: 176 bytes allocated and freed per chunk, and the
        # allocator's search each time was 9% of a file download's instructions).
        # No len(buf) either: a builtin's name is searched for at every call. The stream's own limit (its second
        # argument) keeps the read inside the body.
        global _k
        c = self._c
        if self._left <= 0 or c.p < c.e or _k >= _FAIR or self._dec is not None or c.s is None:
            return self._nowait(buf)
        n = c.s.readinto(buf, self._left)
        if n:  # None: nothing waiting; 0: the peer closed, which the awaited path reports
            _k += n
            return self._took(n)
        if not buf:
            return 0  # an empty buffer: nothing to wait for

    def read_nowait(self, n=-1):
        """Body bytes that are already here, at most n (n < 0: a buffer's worth), without waiting: b"" when the
        next read has to wait or the body is over (`await read(n)` then waits, or says which). DownloadManager's
        stream mode hands these very bytes to its chunk callback: the socket makes the bytes object, and no
        buffer is filled and copied. A connection reset raises the socket's OSError, as readinto_nowait."""
        global _k
        c = self._c
        left = self._left
        if n <= 0 or left <= 0 or c.p < c.e or _k >= _FAIR or self._dec is not None or c.s is None:
            return self._read_nowait(n)
        b = c.s.read(n if n < left else left)  # None: nothing waiting; b"": the peer closed (read() reports it)
        if not b:
            return b""
        n = _len(b)
        _k += n
        self._took(n)
        return b

    def _read_nowait(self, n):
        # read_nowait's other cases: the next chunk's size line, and bytes that came with the head or a size line
        # (copied out, at most n). No buffer is made before there are bytes for it: at every chunk boundary a
        # read may find nothing yet.
        global _k
        c = self._c
        if not n or c.s is None:
            return b""
        left = self._frame()
        if not left:
            return b""
        if n < 0:
            n = _BUF
        if c.p == c.e:
            return self.read_nowait(n)  # the size line came alone: the rest is the socket's
        n = min(n, left, c.e - c.p)
        b = bytes(memoryview(c.buf)[c.p : c.p + n])
        c.took(n)
        _k += n
        self._took(n)
        return b

    def _nowait(self, buf):
        # readinto_nowait's other cases: the rest of a frame shorter than buf, bytes buffered with the head or a
        # chunk-size line, the next chunk's size line, and everything that must take the awaited path.
        global _k
        if not buf:
            return 0  # as io's readinto, whatever the body's state: there was nothing to read into
        left = self._frame()
        if not left:
            return None
        c = self._c
        if c.p < c.e:  # bytes that came in with the head or a chunk-size line
            n = min(len(buf), left, c.e - c.p)
            buf[:n] = memoryview(c.buf)[c.p : c.p + n]
            c.took(n)
        else:
            if c.s is None:
                return None
            n = c.s.readinto(buf if len(buf) <= left else memoryview(buf)[:left])  # a reset: see readinto_nowait
            if not n:
                return None
        _k += n
        return self._took(n)

    def _frame(self):
        # The body bytes the current frame (chunk, or whole body) can still hand out without waiting, past the
        # next chunk-size line if that is due and here; 0 when the read must take the awaited way: a decoder,
        # the end of the body, a size line not all here, or 64 KB without a wait. After those 64 KB the slow
        # way lets other tasks run (see _Conn.recv). Not more often: it allocates generators, and in a loop that
        # allocates nothing else each allocation rescans the heap from MicroPython's stale free-memory hint (see
        # readinto); every 16 KB cost 40% here.
        if self._dec is not None or _k >= _FAIR:
            return 0
        if self._left > 0:
            return self._left
        if not self._chunked or self._eof:
            return 0
        return self._size_line()

    def _size_line(self):
        # The next chunk's size, parsed in place from a "[CRLF]hex[;ext]CRLF" line that is already buffered
        # (or arrives with one non-blocking read), so chunked bodies allocate nothing per chunk either.
        # 0 when the line is not all here, is the last chunk, or looks unusual in any way: _next_chunk then
        # reads it the slow way and does the full checks. Few locals and no try keep this frame off the heap
        # (see readinto_nowait); a reset raises the socket's OSError, which readinto reports.
        c = self._c
        if c.buf is None or self._left < -1:  # -2: in the trailers, which _next_chunk reads
            return 0
        if c.p == c.e and c.s is not None:
            c.p = c.e = 0
            c.e = c.s.readinto(c.buf) or 0
        i = c.p
        if self._left == -1:  # the CRLF after the previous chunk's data
            if c.e - i < 2 or c.buf[i] != 13 or c.buf[i + 1] != 10:
                return 0
            # Taken now, whatever follows: servers send it with the data, and the size line often comes later.
            # Then nothing is left buffered, and readinto waits for the socket without a generator.
            c.p = i = i + 2
            self._left = 0
        j = c.buf.find(b"\n", i, c.e)
        n = _hex(c.buf, i, j)
        if n:
            c.p = j + 1
            self._left = n
        return n

    def readinto(self, buf):
        """Read up to len(buf) bytes of body into buf; 0 at the end. (awaitable)

        The awaitable is the response's one _Read, not a new generator, whether bytes are already waiting or the
        read has to wait for the socket, and it allocates nothing while the read size repeats: MicroPython's
        allocator only moves its "free memory starts here" hint on one-block allocations, so a loop whose only
        garbage is a generator per call rescans all earlier garbage on every call (measured: 15x slower with a
        16 MB heap). Chunk framing that is not all here, the end of the body and decoding take a generator.
        """
        return self._due(buf, 0)

    def _due(self, buf, n):
        # the _Read for a read into buf (or, buf None, of n bytes) to be done when it runs: the response's own,
        # unless that one is still out (made and not yet awaited, as with gather()): then one of its own
        w = self._now
        if w is None or w.st:
            w = self._now = _Read(self)
        w.buf = buf
        w.want = n
        w.st = 5
        return w

    def _try(self, w):
        # _Read w's read, which never waits (readinto_nowait(w.buf), or read_nowait(w.want)); a reset is a
        # ClientPayloadError. Shaped to keep its frame on the C stack (see readinto_nowait): two arguments, the
        # try only returns, the handler binds no name (`as e` alone is enough for a heap frame) and its work
        # comes after it.
        try:
            return self.readinto_nowait(w.buf) if w.buf is not None else self.read_nowait(w.want)
        except OSError:
            pass
        self._cut("connection error")

    def _slow(self, buf):
        # the generator for a read into buf that needs one: a decoder, framing, the end of the body
        return self._dec.decode_into(buf) if self._dec is not None else self._raw_readinto(buf)

    def _took(self, n):
        # n body bytes were read out of the current frame (chunk, or the whole body)
        self.total_bytes += n
        if self._chunked:
            self._left = self._left - n or -1  # -1: the chunk's CRLF comes next
        elif not self._close:
            self._left -= n
            if not self._left:
                self._finish(True)
        return n

    def _cut(self, e):
        # A reset (ECONNRESET...) mid-body must not escape as a bare OSError, past `except aiohttp.ClientError`:
        # it is a body cut short like any other. Drop the connection and say so.
        self._eof = True
        self._done(False)
        raise ClientPayloadError("response payload is not completed (%s)" % (e,))

    async def _raw_readinto(self, buf):
        try:
            left = self._left
            if left <= 0:
                if self._eof or not self._chunked:
                    return 0
                left = await self._next_chunk()
                if not left:
                    return 0
            c = self._c
            if c.p < c.e:  # bytes that arrived with the head or a chunk-size line
                n = min(len(buf), left, c.e - c.p)
                buf[:n] = memoryview(c.buf)[c.p : c.p + n]
                c.took(n)
            else:
                if c.s is None:
                    raise ServerDisconnectedError("connection closed")
                n = await c.recv(buf if len(buf) <= left else memoryview(buf)[:left])
                if not n:
                    if self._close:
                        self._finish(False)
                        return 0
                    self._eof = True
                    self._done(False)
                    raise ClientPayloadError("response payload is not completed (connection closed early)")
            return self._took(n)
        except OSError as e:
            self._cut(e)
        except ServerDisconnectedError as e:  # the body ended inside a chunk-size line or the trailers
            if self._c.s is None:
                raise  # no: this response was released, or its session closed
            self._cut(e)

    async def readany(self):
        return await self.read(1024)


class _Inflate(io.IOBase):
    # Content-Encoding gzip/deflate, decoded while streaming with MicroPython's `deflate` module.
    # DeflateIO pulls its input synchronously and cannot resume after running dry, so input is kept
    # well ahead of what one small output step can consume; at the end of the body it may drain freely.
    # The request lasts until the last byte is decoded: its connection, and so its deadline, is let go then.
    _z = None  # the DeflateIO, made once the first input shows which format a "deflate" body has
    _p = _e = 0  # the input not yet decoded is _in[_p:_e]
    _end = _done = False

    def __init__(self, reader, coding):
        self._r = reader
        self._gzip = coding != "deflate"
        self._in = bytearray(2048)

    def readinto(self, buf, *args):  # called by DeflateIO
        n = min(len(buf), self._e - self._p)
        buf[:n] = memoryview(self._in)[self._p : self._p + n]
        self._p += n
        return n

    async def _top_up(self):
        b, p, e = self._in, self._p, self._e
        if p:
            b[: e - p] = memoryview(b)[p:e]
            self._e = e = e - p
            self._p = 0
        while not self._end and e < len(b):
            n = await self._r._raw_readinto(memoryview(b)[e:])
            if not n:
                self._end = True
            e += n
            self._e = e

    def _format(self):
        # "deflate" is meant to be zlib (RFC 9110), yet some servers send a bare deflate stream: a zlib stream
        # starts with a header whose method is 8 and whose two bytes are a multiple of 31
        import deflate

        if self._gzip:
            return deflate.GZIP
        b = self._in
        zlib = self._e - self._p >= 2 and b[self._p] & 0x0F == 8 and (b[self._p] << 8 | b[self._p + 1]) % 31 == 0
        return deflate.ZLIB if zlib else deflate.RAW

    # Not named readinto: that name is the synchronous input side DeflateIO calls (defined above).
    async def decode_into(self, buf):
        global _k
        if self._done:
            return 0
        if _k >= _FAIR:  # a small body may inflate to megabytes: other tasks get their turns, the deadline holds
            await self._r._c.take_turn()
        if not self._end and self._e - self._p < 1536:
            await self._top_up()
        if self._z is None:
            import deflate

            self._z = deflate.DeflateIO(self, self._format())
        # With >= 1.5 KB of input in hand, <= 256 bytes of output can never starve the decoder (worst case:
        # two dynamic Huffman block headers of ~290 bytes and 256 literals of 15 bits).
        mv = buf if self._end or len(buf) <= 256 else memoryview(buf)[:256]
        try:
            n = self._z.readinto(mv)
        except (OSError, EOFError, ValueError) as e:
            self._r._done(self._end)  # (a body whose HTTP framing ended cleanly leaves its connection reusable)
            raise ClientPayloadError("compressed body is corrupt or cut short (%s)" % (e,))
        if not n:
            if not self._end or self._e > self._p:
                self._r._done(self._end)
                raise ClientPayloadError("compressed body is corrupt or cut short")
            self._done = True
            self._r._done(True)
        _k += n
        return n


def _field(blocks, buf, p, end):
    # One header line, buf[p:end], onto the head's last block as "\nname:value" (see CIMultiDictProxy); False if
    # it is no field. A line that starts with a space or tab goes on the field above, after a space (obs-fold,
    # RFC 9112 section 5.2): read as a field of its own, its text became a header the server never sent.
    fold = buf[p] in (32, 9)
    if not fold:
        i = buf.find(b":", p, end)
    else:
        i = p if blocks[-1] else -1  # (no field above to go on)
    if i < 0:
        return False
    mv = memoryview(buf)
    j = end
    if not fold:
        k = bytes(mv[p:i]).strip().lower()
        try:
            k.decode()
        except UnicodeError:  # a name that is not UTF-8: kept as the str lookups will encode it
            k = _latin1(k).encode()
        i += 1
    while i < j and buf[i] in b" \t\r\n\x0b\x0c":  # the value without the whitespace around it
        i += 1
    while j > i and buf[j - 1] in b" \t\r\n\x0b\x0c":
        j -= 1
    t = blocks[-1]
    if not fold:
        if t and len(t) + len(k) + j - i > _BLOCK:  # a new block, the last one closed by its "\n"
            t += b"\n"
            t = bytearray()
            blocks.append(t)
        t += b"\n"
        t += k
        t += b":"
    elif i < j:
        t += b" "
    t += mv[i:j]
    return True


def _length(h, status):
    # Content-Length: digits only, one number however often it is repeated (RFC 9112 section 6.3), and no more
    # than a machine word holds (socket reads take the count as one)
    vals = h.getall("Content-Length")
    if not vals:
        return None
    n = None
    for v in ",".join(vals).split(","):
        v = v.strip()
        if not v.isdigit() or n is not None and int(v) != n or int(v) > sys.maxsize:
            raise ClientResponseError(status, "bad Content-Length %r" % ", ".join(vals)[:40])
        n = int(v)
    return n


def _framing(h, status, bodyless):
    # -> (Content-Length or None, chunked) as the head frames the body. Transfer codings other than chunked are
    # refused: their bytes are not the resource.
    if bodyless:
        return 0, False
    te = [t for t in h.tokens("Transfer-Encoding") if t != "identity"]
    if not te:
        return _length(h, status), False
    if te != ["chunked"]:
        raise ClientResponseError(status, "unsupported Transfer-Encoding %r" % ", ".join(te)[:40])
    return None, True


def _coding(h, status):
    # -> the Content-Encoding _Inflate must undo, or None. One that it can't undo is refused: coded bytes handed
    # on as the body would be wrong bytes reported as success.
    ce = [t for t in h.tokens("Content-Encoding") if t != "identity"]
    if not ce:
        return None
    if len(ce) > 1 or ce[0] not in _DECODABLE:
        raise ClientResponseError(status, "cannot decode Content-Encoding %r" % ", ".join(ce)[:40])
    return ce[0]


class ClientResponse(StreamReader):
    method = "GET"
    status = 0
    reason = ""
    version = "HTTP/1.1"  # as the status line says (an instance attribute only when it says otherwise)
    headers = None
    _keep = True
    _released = False

    def __init__(self, session, method, url, conn):
        self._s = session
        if method != "GET":
            self.method = method
        self.url = url
        self._c = conn

    async def _start(self, deadline):
        # deadline: the request's own (ClientTimeout.total), back in force once the head is read
        c = self._c
        total = 0
        while True:  # once more after each 1xx (100 Continue, 103 Early Hints): the answer is the head that follows
            line = await c.readline()
            if not line:
                raise ServerDisconnectedError("server closed the connection without a response")
            parts = _latin1(line).rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
                raise ClientResponseError(0, "bad status line %r" % line[:80])
            if parts[0] != "HTTP/1.1":
                self.version = parts[0]
            self.status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            # Nearly every answer says "OK": keep the constant, not a copy that each response would hold (64
            # bytes of heap on the unix port) for as long as its body streams.
            self.reason = "OK" if reason == "OK" else reason
            # Each field is copied from the connection's buffer once, into blocks: a head that grew as one
            # bytearray moved through the heap at every line, leaving holes none of its later sizes fit.
            blocks = [bytearray()]
            total += len(line)
            n = 0
            while True:
                end = await c.line_end()
                if not end:
                    raise ServerDisconnectedError("connection closed inside the response head")
                buf, p = c.buf, c.p
                if buf[p] in (10, 13) and end - p <= 2:  # the blank line
                    c.p = end
                    break
                n += 1
                if n > _HEADERS_MAX:
                    raise ClientResponseError(self.status, "too many header fields")
                # Each line was capped, their sum was not: many long lines ended in MemoryError.
                total += end - p
                if total > _HEAD_TOTAL:
                    raise ClientResponseError(self.status, "response head larger than %d bytes" % _HEAD_TOTAL)
                if not _field(blocks, buf, p, end):
                    raise ClientResponseError(self.status, "bad header line %r" % bytes(buf[p : min(end, p + 80)]))
                c.p = end
            if not 100 <= self.status < 200 or self.status == 101:
                break
        if c.end is not deadline:
            c.end = deadline
        blocks[-1] += b"\n"
        self.headers = h = CIMultiDictProxy(blocks)
        st = self.status
        if self.version != "HTTP/1.1" or "close" in h.tokens("Connection") or st == 101:
            self._keep = False  # (101: the connection now speaks another protocol)
        length, chunked = _framing(h, st, self.method == "HEAD" or st in (204, 304) or st == 101)
        if chunked and "content-length" in h:
            self._keep = False  # chunked wins (RFC 9112 section 6.3), but the sender is not to be trusted further
        self._body(length, chunked)
        if c.keep_buf != chunked:
            c.keep_buf = chunked  # chunk-size lines need the buffer; other bodies let it go when it is empty
        c.took(0)
        if self._s._auto_decompress and not self._eof:
            enc = _coding(h, st)
            if enc is not None:
                self._dec = _Inflate(self, enc)
        if self._eof:
            self._done(True)

    @property
    def content(self):
        return self

    @property
    def content_length(self):
        # None when the body is not framed by it (chunked wins over a Content-Length sent with it)
        n = self.headers.get("Content-Length")
        return int(n) if n and n.isdigit() and not self._chunked else None

    @property
    def ok(self):
        return self.status < 400

    def _done(self, reusable):
        # The body was read to its end (reusable) or the connection can no longer be trusted.
        if self._released:
            return
        # The connection stays referenced: a body read to its end (or cut) never touches it again.
        self._released = True
        self._s._release(self._c, reusable and self._keep)

    def release(self):
        # Closing is the only safe choice for a body that was not read to its end.
        self._done(False)

    close = release

    @property
    def closed(self):
        return self._released

    def read(self, n=-1):
        """The whole body as bytes (resp.read()), or up to n bytes of it (resp.content.read(n)): b"" at the end.
        (awaitable) Up to n bytes: the bytes the socket makes, with no buffer filled and copied, when they are
        already here or the read only waits for them (as readinto, the awaitable is the response's _Read)."""
        return self._due(None, n) if n > 0 else self._read_all(n)

    async def _read_all(self, n=-1):
        # read(n) when the bytes are not simply on their way (framing, a decoder, the end), and the whole body,
        # which fills one preallocated buffer when its length is known. Not kept: resp.content is the response
        # itself, so content.read() must answer b"" at the end, and a second read() (or text() after read())
        # answers b"" too.
        if n >= 0:
            if not n:
                return b""
            b = bytearray(n)
            k = await self._slow(b)
            return bytes(b) if k == n else bytes(memoryview(b)[:k])
        if self._dec is None and not self._chunked and not self._close and _fits(self._left):
            # Size the buffer by what is still to come, not by Content-Length: a HEAD (or 204/304) response
            # has a Content-Length but no body, and part of the body may have been read already; both
            # came back padded with zero bytes up to Content-Length.
            n = self._left
            b = bytearray(n)
            mv = memoryview(b)
            got = 0
            while got < n:
                k = await self.readinto(mv[got:])
                if not k:
                    break
                got += k
            return bytes(b) if got == n else bytes(mv[:got])
        parts = []
        b = bytearray(1024)
        while True:
            k = await self.readinto(b)
            if not k:
                break
            parts.append(bytes(memoryview(b)[:k]))
        return b"".join(parts)

    async def text(self, encoding=None):
        # In the charset the Content-Type names, UTF-8 when it names none. MicroPython decodes UTF-8 only (any
        # name given to decode() is ignored): a latin-1 body is mapped byte by byte.
        b = await self.read()
        if encoding is None:
            ct = self.headers.get("Content-Type", "").lower()
            i = ct.find("charset=")
            encoding = ct[i + 8 :].split(";", 1)[0].strip(" \"'") if i >= 0 else "utf-8"
        if encoding.lower() in ("iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1"):
            return _from_latin1(b)
        return b.decode()

    async def json(self):
        import json

        return json.loads(await self.read())

    def raise_for_status(self):
        if self.status >= 400:
            self.release()
            raise ClientResponseError(self.status, self.reason, self.headers)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.release()

    def __repr__(self):
        return "<ClientResponse(%s) [%d %s]>" % (self.url, self.status, self.reason)


class _RequestContext:
    # `await session.get(url)` and `async with session.get(url) as resp:` both work.
    def __init__(self, coro):
        self._coro = coro
        self._resp = None

    def __iter__(self):
        return (yield from self._coro)

    __await__ = __iter__

    # The coroutine protocol too, so asyncio.wait_for(session.get(url), t) and create_task(session.get(url))
    # work as with aiohttp (MicroPython's create_task wants an object with send(); it refused this one).
    def send(self, v):
        return self._coro.send(v)

    def throw(self, *exc):
        return self._coro.throw(*exc)

    def close(self):
        return self._coro.close()

    async def __aenter__(self):
        # Let go of the coroutine once it is done: a finished one still holds its frame and everything its
        # locals pointed to (the request headers, the redirect list...) for as long as the response lives.
        coro, self._coro = self._coro, None
        self._resp = await coro
        return self._resp

    async def __aexit__(self, *exc):
        self._resp.release()


class ClientSession:
    # The defaults live on the class, and __init__ sets only what differs: a session lives as long as its
    # downloads, and its attribute table grows with every attribute set (14 of them took 288 bytes).
    _base = _ssl = _ctx = _wd = None
    _headers = {}  # never changed in place
    _timeout = DEFAULT_TIMEOUT
    _max_redirects = 10
    _downgrade = False
    _pool_size = 4
    _keepalive_ms = 15000
    _auto_decompress = True
    _ws = ()  # open websockets (aiohttp/websocket.py keeps the list): the session closes them
    closed = False

    def __init__(self, base_url=None, headers=None, timeout=None, ssl=None, max_redirects=10,
                 allow_downgrade=False, pool_size=4, keepalive_timeout=15, auto_decompress=True):
        check_headers(headers)
        if headers:
            headers = dict(headers)  # checked once, here: the caller's dict changed later must not reach a request
        for name, v in (("_base", base_url), ("_headers", headers or {}), ("_timeout", timeout or DEFAULT_TIMEOUT),
                        ("_ssl", ssl), ("_max_redirects", max_redirects), ("_downgrade", allow_downgrade),
                        ("_pool_size", pool_size), ("_keepalive_ms", int(keepalive_timeout * 1000)),
                        ("_auto_decompress", auto_decompress)):
            if v != getattr(ClientSession, name):
                setattr(self, name, v)
        self._idle = []  # pooled connections, oldest first
        self._busy = []  # connections serving a request

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        self.shutdown()
        await asyncio.sleep(0)

    def shutdown(self):
        # close() without awaiting: safe in a `finally` of a cancelled task
        self.closed = True
        for ws in tuple(self._ws):
            ws._going_away()
        for c in self._busy:
            c.close()
        for c, _ in self._idle:
            c.close()
        self._idle = []
        self._busy = []
        self._stop_watchdog()

    def _stop_watchdog(self):
        wd, self._wd = self._wd, None
        if wd is not None and wd is not core.cur_task:
            wd.cancel()

    # --- connections -------------------------------------------------------------------------------------
    def _tls(self, ssl):
        if ssl is None or ssl is True:
            ssl = self._ssl
        if ssl is None or ssl is True or ssl is False:
            if self._ctx is None:
                self._ctx = tls_context()
            return self._ctx
        return ssl

    def _take_idle(self, key):
        import select

        now = ticks_ms()
        keep = []
        found = None
        for c, since in self._idle:  # (connection, when it went idle): no attribute of its own for that
            if ticks_diff(now, since) > self._keepalive_ms or (found is None and c.key == key and _stale(select, c)):
                c.close()
            elif found is None and c.key == key:
                found = c
            else:
                keep.append((c, since))
        self._idle = keep
        return found

    def _release(self, c, reusable):
        try:
            self._busy.remove(c)
        except ValueError:
            pass
        c.task = c.dl = None
        if c.end is not None:  # (set only if ever needed: see __init__)
            c.end = None
        if reusable and not self.closed and c.s is not None and c.p == c.e and self._pool_size > 0:
            self._idle.append((c, ticks_ms()))
            if len(self._idle) > self._pool_size:
                self._idle.pop(0)[0].close()
        else:
            c.close()

    async def _watchdog(self):
        # One task per session enforces every timeout: far cheaper than asyncio.wait_for around each read. It ends
        # by itself at a tick that finds no request: requests one after another share it, none is cancelled.
        try:
            while self._busy:
                await asyncio.sleep_ms(_TICK)
                now = ticks_ms()
                for c in self._busy:
                    t = c.task
                    if t is not None and c.dl is not None and ticks_diff(now, c.dl) >= 0:
                        c.expired = True
                        c.dl = c.end = c.task = None
                        t.cancel()
        finally:
            if self._wd is core.cur_task:
                self._wd = None

    async def _connect(self, key, timeout):
        # -> (a connection, whether it served a request before)
        c = self._take_idle(key)
        reused = c is not None
        if not reused:
            for o in self._busy:  # connections to one host share one key (tuple and host string)
                if o.key == key:
                    key = o.key
                    break
            c = _Conn(key)
        self._busy.append(c)
        if c.expired:
            c.expired = False
        if timeout.total or c.end is not None:
            c.end = ticks_add(ticks_ms(), _ms(timeout.total)) if timeout.total else None
        if self._wd is None and (timeout.total or timeout.connect or timeout.sock_read):
            self._wd = asyncio.create_task(self._watchdog())
        if c.s is None:
            try:
                c.open(await _resolve(key[1], key[2], _ms(timeout.connect), c.end))
            except OSError as e:
                self._release(c, False)
                raise ClientConnectionError("cannot connect to %s:%d: %s" % (key[1], key[2], e), e.errno)
            except BaseException:
                self._release(c, False)
                raise
        return c, reused

    # --- requests ----------------------------------------------------------------------------------------
    def request(self, method, url, **kw):
        return _RequestContext(self._request(method, url, **kw))

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def put(self, url, **kw):
        return self.request("PUT", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)

    def patch(self, url, **kw):
        return self.request("PATCH", url, **kw)

    def options(self, url, **kw):
        return self.request("OPTIONS", url, **kw)

    def head(self, url, **kw):
        kw.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kw)

    def ws_connect(self, url, **kw):
        # a websocket on a connection of its own (aiohttp/websocket.py, imported here on the first call)
        from .websocket import ws_connect

        return ws_connect(self, url, **kw)

    async def _request(self, method, url, headers=None, data=None, json=None, params=None, ssl=None,
                       timeout=None, allow_redirects=True, max_redirects=None):
        if self.closed:
            raise RuntimeError("session is closed")
        if not isinstance(url, str):
            split_url(url)  # InvalidURL, naming the type
        if self._base and not _absolute(url):
            url = join_url(self._base, url)
        if "#" in url:
            url = url.split("#", 1)[0]  # never sent, and not part of resp.url (as in aiohttp)
        if params:
            url += ("&" if "?" in url else "?") + _form(params)
        split_url(url)
        check_headers(headers)
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError("invalid HTTP method %r" % (method,))
        method = method.upper()
        hdrs = {}  # lower-cased name -> (name as given, value): a request's header wins over the session's
        for src in (self._headers, headers):
            for k, v in src.items() if src else ():
                hdrs[k.lower()] = (k, v if isinstance(v, str) else str(v))
        if json is not None:
            import json as _json

            data = _json.dumps(json)
            hdrs.setdefault("content-type", ("Content-Type", "application/json"))
        if isinstance(data, dict):
            data = _form(data)
            hdrs.setdefault("content-type", ("Content-Type", "application/x-www-form-urlencoded"))
        if isinstance(data, str):
            data = data.encode()
        timeout = timeout if isinstance(timeout, ClientTimeout) else (
            ClientTimeout(total=timeout) if timeout else self._timeout)
        hops = self._max_redirects if max_redirects is None else max_redirects
        seen = []
        while True:
            resp = await self._send(method, url, hdrs, data, ssl, timeout)
            if not allow_redirects or resp.status not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            try:
                n = resp.content_length
                if n is not None and n <= 2048:
                    await resp.read()  # a short body: read it so the connection can serve the next hop
            finally:
                resp.release()  # also when that read fails or times out: the caller never sees this response
            try:
                new = join_url(url, resp.headers["Location"])
                n_scheme, n_host, n_port, _ = split_url(new)
            except InvalidURL as e:  # the server's URL, not the caller's: a bad response
                raise InvalidUrlRedirectClientError(resp.status, "bad redirect: %s" % e)
            o_scheme, o_host, o_port, _ = split_url(url)
            if o_scheme == "https" and n_scheme == "http" and not self._downgrade:
                raise ClientResponseError(resp.status, "refused redirect from https to http: %s" % new)
            seen.append((method, url))
            if resp.status == 303 and method != "HEAD" or resp.status in (301, 302) and method == "POST":
                method, data = "GET", None
                hdrs.pop("content-type", None)
            if (method, new) in seen:
                raise TooManyRedirects(resp.status, "redirect loop at %s" % new)
            if len(seen) > hops:
                raise TooManyRedirects(resp.status, "more than %d redirects" % hops)
            if (n_scheme, n_host, n_port) != (o_scheme, o_host, o_port):
                for k in ("authorization", "cookie", "host"):  # meant for the origin they were given for
                    hdrs.pop(k, None)
            url = new

    async def _send(self, method, url, hdrs, data, ssl, timeout):
        scheme, host, port, target = split_url(url)
        own = hdrs.get("host")  # a Host of the caller's own (a virtual host on an address) wins
        head = ["%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, own[1] if own else _hostport(scheme, host, port))]
        for lk, kv in hdrs.items():
            if lk not in ("host", "content-length"):
                head.append("%s: %s\r\n" % kv)
        if data is not None or method in ("POST", "PUT", "PATCH"):
            head.append("Content-Length: %d\r\n" % (len(data) if data else 0))
        head.append("\r\n")
        head = "".join(head).encode()
        # The TLS context is part of the key: a connection opened unverified must not serve a request that asks
        # for verification (or for another CA).
        key = (scheme, host, port, self._tls(ssl) if scheme == "https" else None)
        while True:
            c, reused = await self._connect(key, timeout)
            resp = ClientResponse(self, method, url, c)
            try:
                c.tmo = _ms(timeout.connect)
                await c.send(head)
                if data:
                    await c.send(data)
                c.tmo = _ms(timeout.sock_read)
                whole = c.end
                if c.tmo is not None:  # the whole head within one read timeout: a head trickled byte by byte ends
                    head_end = ticks_add(ticks_ms(), c.tmo)
                    if whole is None or ticks_diff(whole, head_end) > 0:
                        c.end = head_end
                await resp._start(whole)
                return resp
            except BaseException as e:
                # A pooled connection the server closed meanwhile: send once more on a fresh one, but only if
                # not a byte of the response had arrived (a status line cut short leaves its bytes in c.buf)
                # and the request may be sent twice (aiohttp's idempotent methods: a POST may have been acted on).
                again = reused and c.p == c.e and not resp.status and method in _IDEMPOTENT
                self._release(c, False)
                if not reused and isinstance(e, (OSError, ClientConnectionError)):
                    _forget(host, port)  # a new connection failed: its address may be out of date
                if again and isinstance(e, (OSError, ServerDisconnectedError)):
                    continue
                if isinstance(e, OSError):
                    raise ClientConnectionError("%s %s: %s" % (method, url, e), e.errno)
                raise


def _fits(n):
    # Whether n bytes can be had in one piece, or may be: a length the server announced is only allocated up
    # front when the heap holds that much; otherwise the body grows as it really arrives.
    import gc

    if n <= gc.mem_free():
        return True
    gc.collect()
    return n <= gc.mem_free()


def _stale(select, c):
    # An idle connection with something to read has been closed by the server (or sent junk): don't reuse it.
    try:
        p = select.poll()
        p.register(c.s, select.POLLIN)
        return bool(p.poll(0))
    except Exception:
        return True

