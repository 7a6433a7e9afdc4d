# What an app hands a ClientSession beside URLs: BasicAuth, the credentials of auth=, TCPConnector, the connection
# settings of connector=, and the HTTP versions of version=. Loaded when an app first names one.

import binascii

# ClientSession(version=)'s values, as MicroPythonOS's earlier aiohttp named them (requests are HTTP/1.1 either way)
HttpVersion10 = "HTTP/1.0"
HttpVersion11 = "HTTP/1.1"


class BasicAuth:
    # (login, password, encoding), as aiohttp's namedtuple; encode() -> the Authorization header's value
    def __init__(self, login, password="", encoding="latin1"):
        if login is None or password is None:
            raise ValueError("None is not allowed as login or password value")
        if ":" in login:
            raise ValueError('A ":" is not allowed in login (RFC 1945 section 11.1)')
        self.login = login
        self.password = password
        self.encoding = encoding

    def encode(self):
        credentials = "%s:%s" % (self.login, self.password)
        if self.encoding.lower().replace("_", "-") in ("latin1", "latin-1", "iso-8859-1"):
            data = bytes(ord(c) for c in credentials)  # (a character past U+00FF is a ValueError, as in CPython)
        elif self.encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            data = credentials.encode()
        else:
            raise LookupError("unknown encoding: %s" % self.encoding)
        return "Basic " + binascii.b2a_base64(data, newline=False).decode()

    def __eq__(self, other):
        return isinstance(other, BasicAuth) and (self.login, self.password, self.encoding) == (
            other.login, other.password, other.encoding)

    def __repr__(self):
        return "BasicAuth(login=%r, password=..., encoding=%r)" % (self.login, self.encoding)


class TCPConnector:
    # ssl: False, True or an SSLContext, as ClientSession's ssl=; force_close: no connection is reused;
    # keepalive_timeout: seconds an idle connection is kept (None: the session's); limit: connections in use at once
    # by the sessions it serves, limit_per_host: to one host and port (0: no limit), as aiohttp counts them: a request
    # beyond them waits for one to come back, within its connect timeout (and total). limit also caps the idle ones
    # each session keeps. The DNS settings are taken and left to the resolver's own cache.
    _owner = None  # the session that closes it when it closes (connector_owner=True)
    _room = None  # the asyncio.Event that requests waiting for a connection wait on

    def __init__(self, *, ssl=True, limit=100, limit_per_host=0, force_close=False, keepalive_timeout=None,
                 ttl_dns_cache=10, use_dns_cache=True, enable_cleanup_closed=False):
        self.ssl = ssl
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.force_close = force_close
        self.keepalive_timeout = keepalive_timeout
        self.closed = False
        self._sessions = []

    def settings(self, ssl, pool_size, keepalive_timeout):
        # -> the session's (ssl, pool_size, keepalive_timeout) with this connector's: the session's ssl= wins
        if ssl is None and self.ssl is not True:
            ssl = self.ssl
        if self.force_close:
            pool_size = 0
        elif self.limit:
            pool_size = min(pool_size, self.limit)
        if self.keepalive_timeout is not None:
            keepalive_timeout = self.keepalive_timeout
        return ssl, pool_size, keepalive_timeout

    def serve(self, session, owner):
        if self.closed:
            raise RuntimeError("connector is closed")
        self._sessions.append(session)
        if owner:
            self._owner = session

    def left(self, session):
        # session closed: the connections it had in use count no more, and the connector goes with its owner
        if session in self._sessions:
            self._sessions.remove(session)
        if session is self._owner:
            self.close()
        self.released()

    def close(self):
        # closes every connection of the sessions it serves, idle or in use (they are closed too, as aiohttp's
        # session.closed says once its connector is). -> an awaitable that is done, as aiohttp's close() is awaited
        self.closed = True
        for session in tuple(self._sessions):
            session.shutdown()
        return ()

    def _full(self, key):
        in_use = to_host = 0
        for session in self._sessions:
            for conn in session._busy:
                in_use += 1
                if conn.key[1] == key[1] and conn.key[2] == key[2]:
                    to_host += 1
        return self.limit and in_use >= self.limit or self.limit_per_host and to_host >= self.limit_per_host

    async def wait_for_room(self, key, until):
        # until a connection to key's host may be opened or taken from the pool. until: the ticks_ms by which the
        # request's connect phase ends (None: never), however often it waits here (woken, it may find the connection
        # that came back taken by another; it may come back after finding no socket free)
        while self._full(key):
            import asyncio
            from time import ticks_diff, ticks_ms
            from . import poll

            if self._room is None:
                self._room = asyncio.Event()
            if until is None:
                await self._room.wait()
                continue
            try:
                await poll.bounded(self._room.wait(), max(ticks_diff(until, ticks_ms()), 0))
            except asyncio.TimeoutError:
                from errno import ETIMEDOUT
                from . import errors

                raise errors.ConnectionTimeoutError("no connection came free within the connect timeout", ETIMEDOUT)

    def released(self):
        # a connection of its sessions came back (to the pool, or closed): the waiting requests look again
        room = self._room
        if room is not None:
            self._room = None
            room.set()
