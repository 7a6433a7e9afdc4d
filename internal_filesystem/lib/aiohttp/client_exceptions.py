# The client's exception classes themselves, with CPython aiohttp's names and hierarchy where MicroPython allows it:
# made by errors.py when one of them is first named. A module of its own: run from a ROMFS image or from .mpy files,
# a loaded module's every function costs heap even if never called, and a download that goes well names none.

def classes():
    # -> name -> class, every class made afresh (errors._make calls it once)
    class ClientError(Exception):
        pass

    class ClientConnectionError(ClientError):
        # .errno carries the socket's error number when there is one, as a plain OSError would
        def __init__(self, msg, errno=None):
            super().__init__(msg)
            self.errno = errno

    class ClientOSError(ClientConnectionError):
        # aiohttp's is an OSError too (see ServerTimeoutError)
        pass

    class ClientConnectorError(ClientOSError):
        # the connection could not be made: refused, unreachable, no address
        pass

    class ClientConnectorDNSError(ClientConnectorError):
        # a host name that could not be looked up; .errno is the resolver's code when it gave one
        pass

    class ClientSSLError(ClientConnectorError):
        pass

    class ClientConnectorCertificateError(ClientSSLError):
        # the server's certificate did not verify against the configured CA: trying again cannot help
        pass

    class ServerConnectionError(ClientConnectionError):
        pass

    class ServerDisconnectedError(ServerConnectionError):
        pass

    class ServerTimeoutError(ServerConnectionError):
        # Not also an asyncio.TimeoutError: MicroPython refuses a class with two built-in exception bases
        pass

    class ConnectionTimeoutError(ServerTimeoutError):
        # the connect timeout: a lookup, the TCP and TLS handshakes, the request going out, a pooled connection
        pass

    class SocketTimeoutError(ServerTimeoutError):
        # the sock_read timeout: the server sent nothing for that long
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

    class InvalidUrlClientError(InvalidURL):
        pass

    class NonHttpUrlClientError(InvalidURL):
        # a scheme other than http and https
        pass

    class InvalidUrlRedirectClientError(ClientResponseError):
        # a redirect whose Location is no URL we can follow: the server's answer was bad, with the status it came with
        pass

    return {
        "ClientError": ClientError,
        "ClientConnectionError": ClientConnectionError,
        "ClientOSError": ClientOSError,
        "ClientConnectorError": ClientConnectorError,
        "ClientConnectorDNSError": ClientConnectorDNSError,
        "ClientSSLError": ClientSSLError,
        "ClientConnectorCertificateError": ClientConnectorCertificateError,
        "ServerConnectionError": ServerConnectionError,
        "ServerDisconnectedError": ServerDisconnectedError,
        "ServerTimeoutError": ServerTimeoutError,
        "ConnectionTimeoutError": ConnectionTimeoutError,
        "SocketTimeoutError": SocketTimeoutError,
        "ClientPayloadError": ClientPayloadError,
        "ClientResponseError": ClientResponseError,
        "TooManyRedirects": TooManyRedirects,
        "ContentTypeError": ContentTypeError,
        "InvalidURL": InvalidURL,
        "InvalidUrlClientError": InvalidUrlClientError,
        "NonHttpUrlClientError": NonHttpUrlClientError,
        "InvalidUrlRedirectClientError": InvalidUrlRedirectClientError,
    }
