# One TCP or TLS connection: opening it (the host name looked up off the event loop), reading and writing without
# blocking, waits the session's watchdog can time out, and the read-ahead that heads and chunk-size lines go through.

import socket
import sys
from errno import EAGAIN, EINPROGRESS, ETIMEDOUT
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

import asyncio

from . import poll
from . import errors

try:
    import _thread  # host names are looked up on a worker thread where there is one
except ImportError:
    _thread = None

_READ_AHEAD = const(512)  # the read-ahead's first size; it doubles for a longer line
_ONE_READ = const(256)  # at most this in a read that makes its bytes (_read_once): its buffer and its bytes must find
# room in a chopped heap, where a run of 512 bytes may be the read-ahead's alone
LINE_MAX = const(8192)  # a head line or chunk-size line longer than this is refused
FAIR_SHARE = const(65536)  # bytes read without a wait, after which the reader lets other tasks run anyway
_len = len  # see docs/design.md: builtins are looked up per call


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


# --- host names -> addresses ---------------------------------------------------------------------------------------
# socket.getaddrinfo blocks its thread for as long as a lookup takes (seconds for a name that does not exist), and on
# a device the event loop's thread is the UI's. Where _thread exists a worker thread looks the name up while the loop
# polls; where it does not, the loop does. An address is kept for _DNS_TTL_MS and dropped when connecting to it fails.

_getaddrinfo = socket.getaddrinfo  # tests put a slow resolver here: the built-in socket module can't be patched
# A device that moves to another network follows its hosts' new addresses within a minute, and a batch of
# downloads (the App Store's icons) costs one lookup. getaddrinfo does not say the record's own TTL.
_DNS_TTL_MS = const(60000)
# Host and port pairs kept at most: a device talks to a few hosts, and an app that walks through many (redirects to
# mirrors, a list of relays) must not grow the cache for ever; the next one empties it (dicts keep no order here)
_DNS_KEPT = const(8)
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
    # An age that reads negative is over half the clock's period (6.2 days on a 32-bit port): long expired
    hit = _dns.get((host, port))
    if hit is not None and 0 <= ticks_diff(ticks_ms(), hit[1]) < _DNS_TTL_MS:
        return hit[0]
    return None


def _settle(lookup):
    # A lookup's thread is done: its worker is free again and its address remembered, also when nobody waits for
    # it any more. -> the address to connect to, or None
    if lookup in _lookups:
        _lookups.remove(lookup)
    answer = lookup.answer or ()
    address = answer[0] if answer else None
    for candidate in answer:
        if candidate[0] == socket.AF_INET:  # IPv4 first: test servers and most device networks listen there
            address = candidate
            break
    if address is not None:
        if _len(_dns) >= _DNS_KEPT:
            _dns.clear()
        _dns[(lookup.host, lookup.port)] = (address, ticks_ms())
    return address


def _start_lookup(host, port):
    # -> the lookup of host:port: the one under way, a new one on a free worker thread (or done at once where
    # there are no threads, or for an address, which needs no lookup), or None while every worker is busy
    for lookup in _lookups[:]:
        if lookup.host == host and lookup.port == port:
            return lookup
        if lookup.done:
            _settle(lookup)  # nobody waits for it any more
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


async def resolve(host, port, connect_ms, end):
    # -> the addrinfo of host:port, known within connect_ms and before the ticks_ms end (None: no limit)
    address = _cached(host, port)
    if address is not None:
        return address
    if connect_ms is not None:
        limit = ticks_add(ticks_ms(), connect_ms)
        end = limit if end is None or ticks_diff(limit, end) < 0 else end
    lookup = _start_lookup(host, port)
    while lookup is None or not lookup.done:
        if end is not None and ticks_diff(ticks_ms(), end) >= 0:
            # its thread finishes on its own; what it finds is kept for the next request
            raise errors.ConnectionTimeoutError("looking up %s took longer than the connect timeout" % host, ETIMEDOUT)
        await asyncio.sleep_ms(_DNS_POLL_MS)
        if lookup is None:
            lookup = _start_lookup(host, port)
    address = _settle(lookup)
    error = lookup.error
    if isinstance(error, OSError):
        # its code: ESP32 raises OSError(-202), the unix port OSError("[addrinfo error -3]")
        code = error.args[0] if error.args else None
        if isinstance(code, str):
            try:
                code = int(code.rstrip("]").rsplit(" ", 1)[-1])
            except ValueError:
                code = None
        raise errors.ClientConnectorDNSError("cannot resolve %s: %s" % (host, error), code)
    if error is not None:
        raise error
    if address is None:
        raise errors.ClientConnectorDNSError("cannot resolve %s: no address" % host)
    return address


def _close(sock):
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def forget(host, port):
    # an address that failed: the next connect looks the name up again
    _dns.pop((host, port), None)


class Connection:
    # Reads try the non-blocking socket first and wait in the event loop only when it has nothing; while a task
    # waits, wait_until holds the deadline the session's watchdog enforces, so a timeout costs nothing while data
    # keeps coming. Defaults live on the class (docs/design.md: attribute tables).
    sock = None
    tcp = None  # under TLS, the TCP socket: MicroPython's TLS socket lets go of it unclosed when a handshake fails
    wire = None  # under TLS, the wire.Wire between the TLS socket and the TCP socket
    buf = None  # the read-ahead, for heads and chunk-size lines; made when needed (see handed_out)
    pos = filled = 0  # the read-ahead not handed out yet: buf[pos:filled]
    wait_ms = None  # how long one wait may last in the phase under way (connect, or read)
    wait_until = None  # the deadline of the wait under way, in ticks_ms
    deadline = None  # the deadline of the whole request (ClientTimeout.total), or of its head while it is read
    waiter = None  # the task waiting now: the watchdog cancels it at wait_until
    timed_out = False  # the watchdog cancelled the waiter without internals: its CancelledError is a timeout
    chunked = False  # a chunked body streams: the read-ahead stays for its size lines
    streak = 0  # bytes read since this connection's reader last let other tasks run

    def __init__(self, key):
        self.key = key  # (scheme, host, port, TLS context or None): a pooled connection serves only its own key
        self.pos = self.filled = self.streak = 0  # read per chunk: on the instance, where a lookup finds them first

    def open(self, address):
        scheme, host, port, ctx = self.key
        self.sock = None  # its slot made first: a heap too full for it fails here, before there is a socket to lose
        sock = socket.socket(address[0], socket.SOCK_STREAM, address[2] if _len(address) > 2 else 0)
        self.sock = sock  # kept before anything can fail, so close() always finds it
        sock.setblocking(False)
        try:  # TCP_NODELAY, as aiohttp: a second write (a POST's body, a websocket frame's next block) goes out at
            # once, not ~40 ms later with the peer's delayed ACK. (IPPROTO_TCP is 6; the unix port names neither.)
            sock.setsockopt(6, getattr(socket, "TCP_NODELAY", 1), 1)
        except OSError:
            pass
        try:
            sock.connect(address[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:  # (the connect goes on in the background)
                forget(host, port)
                raise
        if scheme == "https":
            self.tcp = sock
            from . import wire  # (loaded by the first https connection: plain HTTP never needs it)

            self.wire = wire.Wire(sock)
            self.sock = ctx.wrap_socket(self.wire, server_hostname=host, do_handshake_on_connect=False)
            self.sock.setblocking(False)

    def close(self):
        # Allocates nothing (no tuple to loop over): it runs in the cleanup of a heap that just ran out
        _close(self.sock)
        _close(self.tcp)  # (closing the TCP socket again after its TLS socket did is harmless)
        self.sock = None
        if self.tcp is not None:
            self.tcp = None
            self.wire = None
        if self.buf is not None:  # read-ahead that came before the close is not handed out after it
            self.buf = None
            self.pos = self.filled = 0

    def readable_by(self, read_nothing=True):
        # What a read waits on: under TLS the TCP socket, which select polls natively, where a TLS socket is polled
        # by asking it in a loop with 1 ms sleeps (unix port). Only after the TLS socket itself was read and had
        # nothing (read_nothing): then it holds no whole record, and more must come over TCP first (a read that must
        # write first would need renegotiation, which MicroPython's mbedTLS leaves off). Otherwise bytes may sit
        # decrypted inside it, which only it can tell; and once the server's close_notify is coming, the TLS
        # socket's wire says the end at once where the TCP socket may never become readable (wire.py).
        return self.tcp if read_nothing and self.tcp is not None and not self.wire.notified else self.sock

    def arm(self):
        # Before a wait: its deadline, for the watchdog to enforce on the running task
        deadline = self.deadline
        if self.wait_ms is not None or deadline is not None:
            until = deadline if self.wait_ms is None else ticks_add(ticks_ms(), self.wait_ms)
            if deadline is not None and ticks_diff(deadline, until) < 0:
                until = deadline
            self.wait_until = until
            self.waiter = poll.current_task()

    def woke(self, e):
        # A wait ended in e: the watchdog's cancellation is a timeout (with internals it raises the timeout itself)
        self.wait_until = None
        # (asyncio throws the class CancelledError, a generator gets an instance)
        if self.timed_out and (e is asyncio.CancelledError or isinstance(e, asyncio.CancelledError)):
            raise errors.SocketTimeoutError("timed out", ETIMEDOUT)
        raise e

    def wait(self):
        # async: until the socket has something to read
        self.arm()
        try:
            yield from poll.readable(self.readable_by())
        except BaseException as e:
            self.woke(e)
        self.wait_until = None

    def within_one_read(self, end):
        # The reads that come next, together, within one read timeout (and before the ticks_ms end, None: none): a
        # head, a redirect's body, trailers, none of which is the body, must not outlast it trickled byte by byte
        if self.wait_ms is not None:
            soon = ticks_add(ticks_ms(), self.wait_ms)
            if end is None or ticks_diff(end, soon) > 0:
                self.deadline = soon

    def take_turn(self):
        # async: a fast link may never make a read wait (nor a decoder run dry): after FAIR_SHARE bytes other tasks
        # (the UI, the watchdog) get a turn anyway, and the whole-request deadline, which no wait may ever arm, is
        # checked. By bytes, not reads: a 64 KB chunk_size would otherwise hold the loop for megabytes.
        yield from asyncio.sleep_ms(0)
        self.streak = 0
        if self.deadline is not None and ticks_diff(ticks_ms(), self.deadline) >= 0:
            raise errors.ServerTimeoutError("request took longer than its total timeout", ETIMEDOUT)

    def recv(self, view, once=False):
        # async: at most len(view) bytes from the socket; 0 when the peer closed. once: in one read (_read_once), for
        # bytes that may be the last before a reset: a short answer, a websocket Close
        if self.streak >= FAIR_SHARE:
            yield from self.take_turn()
        while True:
            sock = self.sock
            if sock is None:
                raise errors.ServerDisconnectedError("connection closed")
            n = self._read_once(sock, view) if once else sock.readinto(view)
            if n is not None:
                self.streak += n
                return n
            yield from self.wait()
            self.streak = 0  # others ran while this task waited

    def _read_once(self, sock, view):
        # -> the bytes one read of sock put into view, None if none had come. readinto reads again while view has
        # room, and a reset it meets then throws away what it had read (py/stream.c, mp_stream_rw): an answer a
        # server sends right before it resets (SO_LINGER 0, or a close with bytes of ours unread) would be lost
        n = _len(view)
        if n > _ONE_READ:
            n = _ONE_READ
        try:
            data = sock.recv(n)
        except OSError as e:
            if e.errno == EAGAIN:  # (a plain socket's "nothing yet"; a TLS socket's is None)
                return None
            raise
        except MemoryError:  # the bytes it read, if it had, went with it: nothing more is read from this connection
            self.close()
            raise
        if data is None:
            return None
        view[: _len(data)] = data
        return _len(data)

    def send(self, data):
        # async: all of data (this also completes a pending connect or TLS handshake)
        if self.sock is None:
            raise errors.ServerDisconnectedError("connection closed")
        self.arm()
        try:
            yield from poll.write_all(self.sock, data)
            self.wrote()
        except ValueError as e:
            # mbedTLS reports a certificate that did not verify as ValueError, with the reason as its text (on one
            # line here: it comes with line breaks around it)
            raise errors.ClientConnectorCertificateError("TLS certificate verification failed: %s"
                                                         % " ".join(str(e).split()))
        except Exception as e:
            self.wrote()  # (a handshake whose TCP write failed fails later, on the EOF: the write's errno is the why)
            self.woke(e)
        except BaseException as e:
            self.woke(e)
        self.wait_until = None

    def wrote(self):
        # Under TLS a TCP write that failed shows only here (wire.py): its errno, as the plain socket raises it
        wire = self.wire
        if wire is not None and wire.write_error:
            self.wait_until = None
            raise OSError(wire.write_error)

    def handed_out(self, n):
        # n bytes of the read-ahead were handed out. Once a body that is not chunked has nothing in it, the buffer
        # goes: a download then holds none while its body streams (the next head makes a new one).
        self.pos += n
        if self.pos == self.filled and not self.chunked:
            self.buf = None
            self.pos = self.filled = 0

    def fill(self):
        # async: more bytes into the read-ahead (moved to its front, or doubled); -> how many arrived
        if self.buf is None:
            try:
                self.buf = bytearray(_READ_AHEAD)
            except MemoryError:  # no free run that long in a fragmented heap: start small, grow per long line
                self.buf = bytearray(64)
        buf, pos, filled = self.buf, self.pos, self.filled
        if pos:
            buf[: filled - pos] = memoryview(buf)[pos:filled]
            self.filled = filled = filled - pos
            self.pos = 0
        if filled == _len(buf):
            if filled >= LINE_MAX:
                raise errors.ClientResponseError(0, "header or chunk line longer than %d bytes" % LINE_MAX)
            bigger = bytearray(2 * filled)
            bigger[:filled] = buf
            self.buf = buf = bigger
        # Nothing pending: the start of a head, a line or a frame, read in one read of the socket (_read_once); a long
        # head's later reads go in place (a bytes object per read would leave the heap in pieces around its fields)
        n = yield from self.recv(memoryview(buf)[filled:], not filled)
        self.filled += n
        return n

    def answered(self):
        # -> whether bytes of an answer are here now (taken into the read-ahead), without waiting: after a request
        # body that could not all go out, they are the answer the server sent before it stopped reading or closed
        if self.pos < self.filled:
            return True
        try:
            if self.buf is None:
                self.buf = bytearray(_READ_AHEAD)
            self.pos = 0
            self.filled = self._read_once(self.sock, self.buf) or 0
        except Exception:  # (reset, with nothing queued before it; a TLS socket past its error)
            return False
        return self.filled > 0

    def line_end(self):
        # async: where the next line ends in the read-ahead (just past its "\n"), the line left unread; 0 at EOF
        searched = 0  # bytes after pos already searched
        while True:
            i = self.buf.find(b"\n", self.pos + searched, self.filled) if self.buf is not None else -1
            if i >= 0:
                return i + 1
            searched = self.filled - self.pos
            if not (yield from self.fill()):
                if self.filled > self.pos:
                    raise errors.ServerDisconnectedError("connection closed inside a line")
                return 0

    def readline(self):
        # async: one line (bytes, with its line ending), or b"" at EOF
        end = yield from self.line_end()
        if not end:
            return b""
        line = bytes(memoryview(self.buf)[self.pos : end])
        self.pos = end
        return line
