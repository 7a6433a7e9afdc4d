# ClientSession: requests, a pool of keep-alive connections, timeouts enforced by one watchdog task, redirects.

import asyncio
from errno import ETIMEDOUT
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

from . import poll
from .connection import Connection, forget, resolve, tls_context
from . import errors
from .response import ClientResponse
from .url import host_port, split_url

_TICK_MS = const(100)  # how often the watchdog looks at the waits under way
_REDIRECT_BODY_MAX = const(2048)  # a redirect's body up to this size is read, so its connection serves the next hop
_IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")  # may be sent again on a fresh connection
_TOKEN_CHARS = "!#$%&'*+-.^_`|~"  # besides letters and digits, in a header name (RFC 9110 token)

_PROBE = bytearray(1)  # what an idle connection's probe reads into
_ENFILE = const(23)  # lwIP's "no socket left" (MicroPython's errno module names neither this nor EMFILE)
_EMFILE = const(24)  # "too many open files": the unix port's descriptors are all taken
_X509_ALLOC_FAILED = const(-0x2880)  # mbedTLS found no memory for the server's certificate chain
# The longest wait a 32-bit port (an ESP32) can time, about 3.1 days: half what ticks_add takes, as asyncio compares
# a deadline with every other by ticks_diff
_LONGEST_MS = const(0x0FFFFFFF)


class ClientTimeout:
    # total: the whole request, body included; connect: DNS, TCP and TLS; sock_read: each wait for data (head, body)
    def __init__(self, total=None, connect=None, sock_read=None, sock_connect=None):
        self.total = total
        self.connect = connect if connect is not None else sock_connect
        self.sock_read = sock_read


DEFAULT_TIMEOUT = ClientTimeout(connect=30, sock_read=60)


def ms(seconds):
    # a timeout in seconds -> ms for ticks_add and asyncio's waits; a longer one than ticks hold waits that long
    return None if seconds is None else int(min(seconds * 1000, _LONGEST_MS))


def _check_text(what, text):
    if not isinstance(text, str):
        raise TypeError("%s must be str, not %s" % (what, type(text).__name__))
    for c in "\r\n\0":
        if c in text:
            raise ValueError("%s contains a forbidden character (CR, LF or NUL): %r" % (what, text))


def check_headers(headers, into):
    """Refuse header names/values that could inject a header or a request (CR, LF, NUL, bad names). headers: a
    mapping (a dict, a CIMultiDictProxy...) or (name, value) pairs, as aiohttp takes them. into: None, or fields
    (lower-cased name -> (name as given, value)) to merge them into."""
    # Each header replaces the field of its name in into; a name that repeats within headers joins its values, as
    # RFC 9110 (section 5.3) allows. (One function that checks and merges, into with no default: each function a
    # module holds is heap, and each default a word of it.)
    if not headers:
        return
    given = {} if into is not None and not isinstance(headers, dict) else into  # (a dict repeats no name)
    for name, value in headers.items() if hasattr(headers, "items") else headers:
        _check_text("header name", name)
        usual = name.replace("-", "").isalpha()  # letters and "-", checked in C; else char by char
        if not usual and (not name or any(not (c.isalpha() or c.isdigit()) and c not in _TOKEN_CHARS or ord(c) > 126
                                          for c in name)):
            raise ValueError("invalid header name: %r" % name)
        value = value if isinstance(value, str) else str(value)
        _check_text("header %s" % name, value)
        if given is not None:
            key = name.lower()
            if given is not into and key in given:
                value = given[key][1] + ("; " if key == "cookie" else ", ") + value  # (RFC 6265: one Cookie field)
            given[key] = (name, value)
    if given is not into:
        into.update(given)


class _RequestContext:
    # `await session.get(url)` and `async with session.get(url) as resp:` both work, and so do
    # asyncio.wait_for(session.get(url), t) and create_task(session.get(url)): the coroutine protocol is passed on
    def __init__(self, coro):
        self._coro = coro
        self._resp = None

    def __iter__(self):
        return (yield from self._coro)

    __await__ = __iter__

    def send(self, value):
        return self._coro.send(value)

    def throw(self, *exc):
        return self._coro.throw(*exc)

    def close(self):
        return self._coro.close()

    async def __aenter__(self):
        # the coroutine goes once done: a finished one still holds its frame and all its locals pointed to
        coro, self._coro = self._coro, None
        resp = self._resp = await coro
        if isinstance(resp, ClientResponse):  # (not a websocket): raise_for_status() leaves the release to __aexit__
            resp._in_context = True
        return resp

    def __aexit__(self, exc_type, exc, tb):
        # (no coroutine to make: in a heap that just ran out, the connection goes back all the same)
        done = self._resp.release()
        errors.raise_if_retyped(exc_type is MemoryError, exc)
        return done


class ClientSession:
    # Defaults live on the class, and __init__ sets only what differs (docs/design.md: attribute tables).
    _base_url = _ssl = _default_tls = _watchdog_task = _auth = _connector = None
    _headers = {}  # the session's header fields, as check_headers(headers, into) merges them; never changed
    _timeout = DEFAULT_TIMEOUT
    _max_redirects = 10
    _allow_downgrade = False
    _pool_size = 4
    _keepalive_ms = 15000
    _auto_decompress = True
    _raise_for_status = False
    _websockets = ()  # the open websockets (kept by aiohttp/websocket.py): the session closes them
    _room = None  # the asyncio.Event requests that found no socket free wait on; set when a connection is done with
    closed = False

    def __init__(self, base_url=None, headers=None, timeout=None, ssl=None, max_redirects=10,
                 allow_downgrade=False, pool_size=4, keepalive_timeout=15, auto_decompress=True,
                 raise_for_status=False, connector=None, auth=None, connector_owner=True, version=None):
        # (version=: aiohttp.HttpVersion10 or 11, taken as aiohttp takes it; every request goes out as HTTP/1.1)
        if connector is not None:  # an aiohttp.TCPConnector: its settings, its limits, closed with this session
            ssl, pool_size, keepalive_timeout = connector.settings(ssl, pool_size, keepalive_timeout)
        if base_url is not None and not split_url(base_url)[3].split("?", 1)[0].endswith("/"):
            # as aiohttp: without it, "http://host/api/v1" joined with "users" would be "http://host/api/users"
            raise ValueError("base_url must have a trailing '/': %r" % base_url)
        if headers:
            fields = {}  # checked once, here: the caller's headers changed later must not reach a request
            check_headers(headers, fields)
            headers = fields
        for name, value in (("_base_url", base_url), ("_headers", headers or {}),
                            ("_timeout", timeout or DEFAULT_TIMEOUT), ("_ssl", ssl), ("_max_redirects", max_redirects),
                            ("_allow_downgrade", allow_downgrade), ("_pool_size", pool_size),
                            ("_keepalive_ms", int(keepalive_timeout * 1000)), ("_auto_decompress", auto_decompress),
                            ("_raise_for_status", raise_for_status), ("_auth", auth)):
            if value != getattr(ClientSession, name):
                setattr(self, name, value)
        self._idle = []  # (pooled connection, ticks_ms when it went idle), oldest first
        self._busy = []  # connections serving a request
        if connector is not None:
            connector.serve(self, connector_owner)
            self._connector = connector

    async def __aenter__(self):
        return self

    def __aexit__(self, exc_type, exc, tb):
        # close(), with no coroutine to make: in a heap that just ran out, the connections go all the same
        self.shutdown()
        errors.raise_if_retyped(exc_type is MemoryError, exc)
        return asyncio.sleep(0)

    async def close(self):
        self.shutdown()
        await asyncio.sleep(0)

    def shutdown(self):
        # close() without awaiting: safe in a `finally` of a cancelled task, and in one whose heap just ran out: the
        # sockets, the waiters and the watchdog go first, allocating nothing (with no websocket open), then the state
        for ws in tuple(self._websockets):
            ws._going_away()
        for conn in self._busy:
            conn.close()
        for conn, _ in self._idle:
            conn.close()
        room = self._room
        if room is not None:  # the requests waiting for a socket end (see _make_room)
            self._room = None
            room.set()
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None and task is not poll.current_task():
            task.cancel()
        if self._connector is not None:
            self._connector.left(self)
        self.closed = True  # (nothing ran since the first line that would have looked)
        self._idle = []
        self._busy = []

    # --- connections ---------------------------------------------------------------------------------------------
    def _tls_context(self, ssl):
        # the request's ssl=, else the session's; True, False or None: the session's own unverified context
        if ssl is None or ssl is True:
            ssl = self._ssl
        if ssl is None or ssl is True or ssl is False:
            if self._default_tls is None:
                self._default_tls = tls_context()
            return self._default_tls
        return ssl

    def _take_idle(self, key):
        now = ticks_ms()
        keep = []
        found = None
        for conn, since in self._idle:
            mine = found is None and conn.key == key
            # (an idle time that reads negative is over half the clock's period: 6.2 days on a 32-bit port)
            if not 0 <= ticks_diff(now, since) <= self._keepalive_ms or (mine and _closed_by_server(conn)):
                conn.close()
            elif mine:
                found = conn
            else:
                keep.append((conn, since))
        self._idle = keep
        return found

    def _done_with(self, conn, reusable):
        # A request is over: its connection goes back to the pool, or is closed
        room = self._room
        if room is not None and conn.sock is not None:  # its socket comes free, or idle, for requests waiting for one
            self._room = None
            room.set()
        if conn in self._busy:  # (no ValueError: made in a full heap, it would take over the MemoryError under way)
            self._busy.remove(conn)
        if conn.waiter is not None:  # (each set only when it holds something: an attribute set anew would take heap)
            conn.waiter = None
        if conn.wait_until is not None:
            conn.wait_until = None
        if conn.deadline is not None:
            conn.deadline = None
        if reusable and not self.closed and conn.sock is not None and conn.pos == conn.filled and self._pool_size > 0:
            if conn.buf is not None:  # (a chunked body's read-ahead, all read: the next head makes its own)
                conn.buf = None
                conn.pos = conn.filled = 0
            self._idle.append((conn, ticks_ms()))
            if len(self._idle) > self._pool_size:
                self._idle.pop(0)[0].close()
        else:
            conn.close()
        if self._connector is not None:
            self._connector.released()

    async def _watchdog(self):
        # One task per session enforces every timeout: far cheaper than asyncio.wait_for around each read. While
        # the session is quiet it closes the idle connections whose keep-alive ran out (a socket and, over TLS,
        # mbedTLS's buffers each, held for as long as no request came to look). It ends by itself at a tick that
        # finds no request and no idle connection, so requests one after another share it and none is cancelled.
        try:
            while self._busy or self._idle:
                await asyncio.sleep_ms(_TICK_MS)
                now = ticks_ms()
                for conn in self._busy:
                    task = conn.waiter
                    if task is not None and conn.wait_until is not None and ticks_diff(now, conn.wait_until) >= 0:
                        conn.wait_until = conn.deadline = conn.waiter = None
                        conn.timed_out = poll.interrupt(task, errors.SocketTimeoutError("timed out", ETIMEDOUT))
                idle = self._idle
                if idle and not 0 <= ticks_diff(now, idle[0][1]) <= self._keepalive_ms:  # (the oldest goes first)
                    self._take_idle(None)  # (a key no connection has: it only closes those past their keep-alive)
        except BaseException as e:
            # An interrupt (Ctrl-C) that lands here ends this task, not the waits it times: a new watchdog takes them
            # on (else a read from a stalled server would wait for ever)
            if (self._watchdog_task is poll.current_task() and not isinstance(e, asyncio.CancelledError)
                    and (self._busy or self._idle)):
                self._watchdog_task = asyncio.create_task(self._watchdog())
            raise
        finally:
            if self._watchdog_task is poll.current_task():
                self._watchdog_task = None

    async def _connect(self, key, timeout, end):
        # -> (a connection, whether it served a request before); end: the request's deadline in ticks, or None
        until = _connect_end(timeout, end)  # the connect phase's: its waits end by it, however often it tries
        while True:
            if self._connector is not None:
                await self._connector.wait_for_room(key, until)
            conn = self._take_idle(key)
            reused = conn is not None
            if not reused:
                for other in self._busy:  # connections to one host share one key (tuple and host string)
                    if other.key == key:
                        key = other.key
                        break
                conn = Connection(key)
            self._busy.append(conn)
            if conn.timed_out:
                conn.timed_out = False
            if end is not None or conn.deadline is not None:
                conn.deadline = end
            if self._watchdog_task is None and (timeout.total or timeout.connect or timeout.sock_read):
                self._watchdog_task = asyncio.create_task(self._watchdog())
            if conn.sock is None:
                try:
                    address = await resolve(key[1], key[2], ms(timeout.connect), conn.deadline)
                    if self.closed:  # meanwhile: nothing would close this connection, nor time its waits
                        raise errors.ClientConnectionError("session closed while connecting to %s" % key[1])
                    conn.open(address)
                except OSError as e:
                    self._done_with(conn, False)
                    await self._make_room(e, until, "cannot connect to %s:%d" % (key[1], key[2]))
                    continue  # (a connection to the same host may have come back to the pool meanwhile)
                except BaseException as e:
                    memory = isinstance(e, MemoryError)  # (read before _done_with: see errors.raise_if_retyped)
                    self._done_with(conn, False)
                    errors.raise_if_retyped(memory, e)
                    if self._freed_memory(e):  # (a MemoryError: OSErrors went to _make_room)
                        continue
                    raise
            return conn, reused

    async def _make_room(self, e, until, what):
        # A connection could not be opened: e. Returns when another try may find a socket free (e said none was, and
        # the oldest idle connection was closed, or one of this session's requests ended before the ticks_ms `until`,
        # None: no wait); else raises e as a ClientConnectorError, what the connection was for first (a
        # ClientConnectionError when the session closed meanwhile).
        import errno

        no_socket = e.errno in (_ENFILE, _EMFILE, errno.ENOBUFS, errno.ENOMEM)
        if no_socket and self._idle:
            self._idle.pop(0)[0].close()
            return
        left = 0 if not no_socket or until is None or not self._busy else ticks_diff(until, ticks_ms())
        if left > 0:
            if self._room is None:
                self._room = asyncio.Event()
            try:
                await poll.bounded(self._room.wait(), left)
            except asyncio.TimeoutError:
                pass
            else:
                if self.closed:  # (woken by shutdown: no socket of this session's will come back)
                    raise errors.ClientConnectionError("%s: session closed" % what)
                return
        why = "no socket free (OSError %d)" % e.errno if no_socket else e
        raise errors.ClientConnectorError("%s: %s" % (what, why), e.errno)

    def _freed_memory(self, e):
        # A new connection failed with e. -> whether e said it found no memory (mbedTLS's buffers, which come from
        # an ESP32's IDF heap, or MicroPython's heap) and the oldest idle connection was closed, its TLS buffers
        # with it: it may then be tried again at once
        import errno

        if self._idle and (isinstance(e, MemoryError) or isinstance(e, OSError) and e.errno in (
                errno.ENOMEM, _X509_ALLOC_FAILED)):
            self._idle.pop(0)[0].close()
            return True
        return False

    # --- requests ------------------------------------------------------------------------------------------------
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
        # a websocket on a connection of its own (aiohttp/websocket.py, loaded on the first call)
        from . import websocket

        return websocket.ws_connect(self, url, **kw)

    async def _request(self, method, url, headers=None, data=None, json=None, params=None, ssl=None,
                       timeout=None, allow_redirects=True, max_redirects=None, raise_for_status=None, auth=None):
        if self.closed:
            raise RuntimeError("session is closed")
        if not isinstance(url, str):
            split_url(url)  # InvalidURL, naming the type
        if self._base_url:
            from . import location

            if not location.is_absolute(url):
                url = location.join_url(self._base_url, url)
        if "#" in url:
            url = url.split("#", 1)[0]  # never sent, and not part of resp.url (as in aiohttp)
        if params:
            from . import form

            url += ("&" if "?" in url else "?") + form.form_encode(params)
        split_url(url)
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError("invalid HTTP method %r" % (method,))
        method = method.upper()
        fields = dict(self._headers)  # lower-cased name -> (name as given, value): a request's wins
        check_headers(headers, fields)
        auth = auth or self._auth  # an aiohttp.BasicAuth; dropped with Authorization on a redirect to another origin
        if auth is not None:
            if "authorization" in fields:
                raise ValueError("Cannot combine AUTHORIZATION header with AUTH argument")
            fields["authorization"] = ("Authorization", auth.encode())
        data = _body(data, json, fields)
        timeout = timeout if isinstance(timeout, ClientTimeout) else (
            ClientTimeout(total=timeout) if timeout else self._timeout)
        hops = self._max_redirects if max_redirects is None else max_redirects
        end = ticks_add(ticks_ms(), ms(timeout.total)) if timeout.total else None  # for every hop, as in aiohttp
        history = []  # the redirects on the way, released; resp.history
        while True:
            resp = await self._send(method, url, fields, data, ssl, timeout, end)
            if not allow_redirects or resp.status not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                if raise_for_status is None:
                    raise_for_status = self._raise_for_status
                if raise_for_status:
                    await _check(resp, raise_for_status)
                if history:
                    resp.history = tuple(history)
                return resp
            try:
                length = resp.content_length
                if length and length <= _REDIRECT_BODY_MAX:
                    resp._conn.within_one_read(end)
                    await resp.read()  # so the connection can serve the next hop
            except BaseException as e:  # (that read failed or timed out: the caller never sees this response)
                memory = isinstance(e, MemoryError)  # (read before the release: see errors.raise_if_retyped)
                resp.release()
                errors.raise_if_retyped(memory, e)
                raise
            resp.release()
            from . import location

            new = location.redirect(resp, url, fields, self._allow_downgrade)
            resp._body = resp._read = None  # (history tells status, url and headers: its bodies would be heap)
            history.append(resp)
            if resp.status == 303 and method != "HEAD" or resp.status in (301, 302) and method == "POST":
                method, data = "GET", None
                for name in ("content-type", "content-encoding", "content-language", "content-location"):
                    fields.pop(name, None)  # the body's own fields go with it (RFC 9110 section 15.4)
            if hasattr(data, "rewind") and not data.rewind():  # (aiohttp's error for it)
                raise errors.ClientPayloadError("a streamed body can't be sent again to %s" % new)
            if any(hop.method == method and hop.url == new for hop in history):
                raise errors.TooManyRedirects(resp.status, "redirect loop at %s" % new)
            if len(history) > hops:
                raise errors.TooManyRedirects(resp.status, "more than %d redirects" % hops)
            url = new

    async def _send(self, method, url, fields, data, ssl, timeout, end):
        scheme, host, port, target = split_url(url)
        own_host = fields.get("host")  # a Host of the caller's own (a virtual host on an address) wins
        head = ["%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, own_host[1] if own_host else
                                                     host_port(scheme, host, port))]
        for name, field in fields.items():
            if name not in ("host", "content-length"):
                head.append("%s: %s\r\n" % field)
        if data is not None or method not in ("GET", "HEAD", "OPTIONS", "TRACE"):  # (a stream: upload.py frames it)
            head.append(data.field() if hasattr(data, "field")
                        else "Content-Length: %d\r\n" % (len(data) if data else 0))
        head.append("\r\n")
        head = "".join(head).encode()
        # The TLS context is part of the key: a connection opened unverified must not serve a request that asks for
        # verification (or for another CA)
        key = (scheme, host, port, self._tls_context(ssl) if scheme == "https" else None)
        while True:
            conn, reused = await self._connect(key, timeout, end)
            resp = ClientResponse(self, method, url, conn)
            connecting = True  # until the head went out (a timeout then is the connect timeout: ConnectionTimeoutError)
            try:
                conn.wait_ms = ms(timeout.connect)
                await conn.send(head)
                connecting = False  # (the TCP connect and the TLS handshake complete within the first send)
                early = False  # the server answered before the whole body went out (a 413, a 401), and stopped reading
                if data:
                    try:
                        await (data.send_to(conn) if hasattr(data, "send_to") else conn.send(data))
                    except Exception as e:
                        early = (isinstance(e, OSError) or errors.kind_of(e, "SocketTimeoutError")) and conn.answered()
                        if not early:
                            raise
                conn.wait_ms = ms(timeout.sock_read)
                conn.within_one_read(end)  # the whole head
                await resp._start(end)
                if early:  # (its answer is the caller's, not a write error; the rest of the body can't follow)
                    resp._reusable = False
                return resp
            except BaseException as e:
                memory = isinstance(e, MemoryError)  # (read before _done_with: see errors.raise_if_retyped)
                # A pooled connection the server closed meanwhile: send once more on a fresh one, but only if not a
                # byte of the answer had arrived and the request may be sent twice (a POST may have been acted on)
                again = (reused and conn.pos == conn.filled and not resp.status and method in _IDEMPOTENT
                         and (not hasattr(data, "rewind") or data.rewind()))
                self._done_with(conn, False)
                errors.raise_if_retyped(memory, e)
                if connecting and not reused and self._freed_memory(e):  # (the TLS handshake runs in the first send)
                    continue
                if not reused and (isinstance(e, OSError) or errors.kind_of(e, "ClientConnectionError")):
                    forget(host, port)  # a new connection failed: its address may be out of date
                if again and (isinstance(e, OSError) or errors.kind_of(e, "ServerDisconnectedError")):
                    continue
                if isinstance(e, OSError):  # (a connect refused or reset shows at the first send)
                    raise (errors.ClientConnectorError if connecting and not reused else errors.ClientOSError)(
                        "%s %s: %s" % (method, url, e), e.errno)
                if connecting and errors.kind_of(e, "SocketTimeoutError"):
                    raise errors.ConnectionTimeoutError("%s %s: connect timeout" % (method, url), ETIMEDOUT)
                raise


async def _check(resp, raise_for_status):
    # ClientSession's and request's raise_for_status=: True, or an async function of the response (as in aiohttp)
    if callable(raise_for_status):
        try:
            await raise_for_status(resp)
        except BaseException as e:
            memory = isinstance(e, MemoryError)  # (read before the release: see errors.raise_if_retyped)
            resp.release()
            errors.raise_if_retyped(memory, e)
            raise
    else:
        resp.raise_for_status()  # (released when it raises: the caller never gets it)


def _body(data, json, fields):
    # -> the request body as bytes (or None), and aiohttp's Content-Type for it unless one was given
    if json is not None:
        if data is not None:
            raise ValueError("data and json parameters can not be used at the same time")
        import json as codec

        data = codec.dumps(json)
        content_type = "application/json"
    elif isinstance(data, dict):
        from . import form

        data = form.form_encode(data)
        content_type = "application/x-www-form-urlencoded"
    elif isinstance(data, str):
        content_type = "text/plain; charset=utf-8"
    elif isinstance(data, (bytes, bytearray, memoryview)):
        content_type = "application/octet-stream"
    elif data is None:
        return None
    else:  # a file or an async iterable, streamed (aiohttp/upload.py)
        from . import upload

        stream = upload.upload(data)
        if stream is None:
            raise TypeError("data must be bytes, str, a dict of form fields, a file opened 'rb' or an async "
                            "iterable, not %s" % type(data).__name__)
        data = stream
        content_type = "application/octet-stream"
    if data:  # (an empty body goes without one, as with MicroPythonOS's aiohttp: aiohttp would name a type)
        fields.setdefault("content-type", ("Content-Type", content_type))
    return data.encode() if isinstance(data, str) else data


def _connect_end(timeout, end):
    # -> the ticks_ms by which a connection must be made: the connect timeout's, or the request's end if sooner
    limit = ms(timeout.connect)
    if limit is not None:
        limit = ticks_add(ticks_ms(), limit)
    return end if limit is None or end is not None and ticks_diff(end, limit) < 0 else limit


def _closed_by_server(conn):
    # An idle connection with something to read was closed by the server (or sent junk): not to be reused. A read
    # probes it: polling a TLS socket costs a 1 ms sleep on the unix port (see Connection.readable_by).
    try:
        return conn.pos < conn.filled or conn.sock.readinto(_PROBE) is not None
    except Exception:
        return True
