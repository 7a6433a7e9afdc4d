# An aiohttp-compatible async HTTP/1.1 client for MicroPython, with CPython aiohttp's names (ClientSession,
# resp.status, resp.content.read(n)), keep-alive, timeouts that cost nothing per read, and sockets that are always
# closed. The modules: client (ClientSession), connection (sockets, DNS, TLS), response (heads and bodies), url,
# errors, poll (where it meets asyncio), loading (first-use loads, one thread at a time); loaded only when a request
# needs them: helpers (BasicAuth, TCPConnector), streams (resp.content), location (redirects), form, upload,
# chunkext, compression, charset and utf8 (text in other charsets), websocket (the first ws_connect). docs/design.md
# tells how a byte goes from the socket to the caller.

from .loading import load_name as _load_name, one_at_a_time as _one_at_a_time

__version__ = "1.0.0"

# Each public name loads with its module on first use, as extmod/asyncio/__init__.py loads its parts: `import aiohttp`
# costs a module object, and the heap for the client is taken when an app first names it (docs/performance.md).
# A line per module: its name, then the names it holds, each followed by a space; none for a module that only the
# package's own functions load, as `from . import wire` (through here: see loading.py's _forget_unmade). One str: a
# tuple of them, run from an .mpy file or ROMFS, would be built in the heap when this module loads, with an object for
# each name (frozen, neither takes heap).
_WHERE = (
    "\nclient ClientSession ClientTimeout DEFAULT_TIMEOUT check_headers "
    "\nconnection tls_context "
    "\nhelpers BasicAuth TCPConnector HttpVersion10 HttpVersion11 "
    "\nerrors ClientError ClientConnectionError ClientConnectorCertificateError ClientConnectorDNSError "
    "ClientConnectorError ClientOSError ClientPayloadError ClientResponseError ClientSSLError ConnectionTimeoutError "
    "ContentTypeError InvalidURL InvalidUrlClientError InvalidUrlRedirectClientError NonHttpUrlClientError "
    "ServerConnectionError ServerDisconnectedError ServerTimeoutError SocketTimeoutError TooManyRedirects "
    "\nresponse CIMultiDictProxy ClientResponse StreamReader "
    "\nurl split_url "
    "\nlocation join_url "
    "\npoll "
    "\nwebsocket WSMsgType WSMessage WSCloseCode WSServerHandshakeError WSMessageTypeError ClientWebSocketResponse "
    "ClientWSTimeout WebSocketError ClientConnectionResetError "
    "\nform \nupload \nchunkext \ncompression \nstreams \ncharset \nutf8 \nwire \nclient_exceptions "
)


# What it uses comes as defaults, not from these globals: a load in another thread grows them (the name it stores, the
# submodule MicroPython's import adds), and on a port without a GIL (unix) a read meanwhile misses names they hold.
def __getattr__(name, where=_WHERE, load_name=_load_name, one_at_a_time=_one_at_a_time):
    if name == "__all__":  # `from aiohttp import *`: every public name, each loaded on the way
        return [public for line in where.split("\n") for public in line.split()[1:]]
    if "\n%s " % name in where:  # a module: `from . import poll` asks the package before it imports the module
        return one_at_a_time(__import__, name, globals(), None, True, 1)
    i = where.find(" %s " % name)  # (found in place, not split: garbage made here would lie below the module loaded)
    if i < 0:
        raise AttributeError(name)
    line = where.rfind("\n", 0, i) + 1
    return one_at_a_time(load_name, globals(), where[line : where.find(" ", line)], name)
