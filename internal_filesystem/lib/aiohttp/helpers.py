# What an app hands a ClientSession beside URLs: BasicAuth, the credentials of auth=, and TCPConnector, the
# connection settings of connector=. Loaded when an app first names one.

import binascii


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
    # keepalive_timeout: seconds an idle connection is kept (None: the session's); limit: connections kept idle at
    # most (0: no limit). Requests beyond limit are not held back (DownloadManager.max_connections does that).
    # The DNS settings are taken and left to the resolver's own cache.
    def __init__(self, *, ssl=True, limit=100, limit_per_host=0, force_close=False, keepalive_timeout=None,
                 ttl_dns_cache=10, use_dns_cache=True, enable_cleanup_closed=False):
        self.ssl = ssl
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.force_close = force_close
        self.keepalive_timeout = keepalive_timeout
        self.closed = False

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

    async def close(self):
        self.closed = True
