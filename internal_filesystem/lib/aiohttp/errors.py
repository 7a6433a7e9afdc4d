# The client's exceptions, with CPython aiohttp's names and hierarchy where MicroPython allows it.
#
# The classes are made when one of them is first named (module __getattr__), all at once: each costs about 250 bytes
# of heap (docs/performance.md), and a download that goes well names none. The modules raise them as
# `errors.ServerDisconnectedError(...)` and test what they caught with kind_of(), which makes none (an exception
# passing by, a MemoryError in a full heap, is no reason to); `from .errors import X` makes them too. They live in a table of their own,
# published whole: this module's globals never change after import (a thread reading them while another grows
# them could miss a name on a port without a global interpreter lock), and a MemoryError part way publishes none.

from .loading import one_at_a_time as _one_at_a_time

_made = None  # name -> class, once made


def __getattr__(name):
    made = _made or _one_at_a_time(_make)  # threads name them at once when the network drops under all of them
    if name == "__all__":  # `from aiohttp.errors import *`
        return list(made)
    if name not in made:
        raise AttributeError(name)
    return made[name]


def kind_of(e, name):
    # isinstance(e, <the class called name>), without making the classes for it: while none is made, nothing is one
    return _made is not None and isinstance(e, _made[name])


def _make():
    # Once only: a second set would not catch the first's exceptions
    global _made
    if _made is None:  # (another thread may have made them meanwhile)
        _made = _classes()
    return _made


def _classes():
    class ClientError(Exception):
        pass

    class ClientConnectionError(ClientError):
        # .errno carries the socket's error number when there is one, as a plain OSError would
        def __init__(self, msg, errno=None):
            super().__init__(msg)
            self.errno = errno

    class ClientOSError(ClientConnectionError):
        # a socket's OSError, .errno its number (aiohttp's is an OSError too: MicroPython allows one built-in base)
        pass

    class ClientConnectorError(ClientOSError):
        # no connection could be made: no socket free, a host unreachable, a refused connection...
        pass

    class ServerDisconnectedError(ClientConnectionError):
        pass

    class ServerTimeoutError(ClientConnectionError):
        # Not also an asyncio.TimeoutError: MicroPython refuses a class with two built-in exception bases
        pass

    class ClientSSLError(ClientConnectorError):
        pass

    class ClientConnectorCertificateError(ClientSSLError):
        # the server's certificate did not verify against the configured CA: trying again cannot help
        pass

    class ClientConnectorDNSError(ClientConnectorError):
        # a host name that could not be looked up; .errno is the resolver's code when it gave one
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

    class ContentTypeError(ClientResponseError):
        # json() of a body whose Content-Type is not the one expected (an HTML page from a captive portal, say)
        pass

    class InvalidURL(ValueError):
        # a bad URL given by the caller: a ValueError only (aiohttp's is a ClientError too; see ServerTimeoutError)
        pass

    class InvalidUrlRedirectClientError(ClientResponseError):
        # a redirect whose Location is no URL we can follow: the server's answer was bad, with the status it came with
        pass

    return {
        "ClientError": ClientError,
        "ClientConnectionError": ClientConnectionError,
        "ClientOSError": ClientOSError,
        "ClientConnectorError": ClientConnectorError,
        "ServerDisconnectedError": ServerDisconnectedError,
        "ServerTimeoutError": ServerTimeoutError,
        "ClientSSLError": ClientSSLError,
        "ClientConnectorCertificateError": ClientConnectorCertificateError,
        "ClientConnectorDNSError": ClientConnectorDNSError,
        "ClientPayloadError": ClientPayloadError,
        "ClientResponseError": ClientResponseError,
        "TooManyRedirects": TooManyRedirects,
        "ContentTypeError": ContentTypeError,
        "InvalidURL": InvalidURL,
        "InvalidUrlRedirectClientError": InvalidUrlRedirectClientError,
    }
