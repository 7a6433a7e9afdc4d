# An aiohttp-compatible async HTTP/1.1 client for MicroPython, with CPython aiohttp's names (ClientSession,
# resp.status, resp.content.read(n)), keep-alive, timeouts that cost nothing per read, and sockets that are always
# closed. The modules: client (ClientSession), connection (sockets, DNS, TLS), response (heads and bodies), url,
# errors, poll (where it meets asyncio), compression and websocket (loaded only when a body is coded, or on the first
# ws_connect). docs/design.md tells how a byte goes from the socket to the caller.

from .client import DEFAULT_TIMEOUT, ClientSession, ClientTimeout, check_headers
from .connection import tls_context
from .errors import (ClientConnectionError, ClientConnectorCertificateError, ClientConnectorDNSError, ClientError,
                     ClientPayloadError, ClientResponseError, ClientSSLError, InvalidURL, InvalidUrlRedirectClientError,
                     ServerDisconnectedError, ServerTimeoutError, TooManyRedirects)
from .response import CIMultiDictProxy, ClientResponse, StreamReader
from .url import join_url, split_url

__version__ = "1.0.0"

# The websocket names, loaded with their module on first use (as extmod/asyncio/__init__.py loads its rare parts)
_LAZY = {
    "WSMsgType": "websocket",
    "WSMessage": "websocket",
    "WSCloseCode": "websocket",
    "WSServerHandshakeError": "websocket",
    "WSMessageTypeError": "websocket",
    "ClientWebSocketResponse": "websocket",
    "ClientWSTimeout": "websocket",
    "WebSocketError": "websocket",
    "ClientConnectionResetError": "websocket",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    value = globals()[name] = getattr(__import__(module, globals(), None, True, 1), name)
    return value
