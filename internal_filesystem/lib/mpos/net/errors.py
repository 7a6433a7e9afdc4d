# The errors a download ends with (DownloadManager.DownloadError and its kinds), and which failures are worth
# another try: is_network_error() for apps, classify() for the retry loop. download_manager.py imports this module
# at once, for DownloadManager's names; download.py loads with the first download.
import errno


# is_network_error()'s codes, compared without their sign (some network stacks report them negated)
_NETWORK_CODES = (
    110, 113, 104, 118, 202,  # the spec's: ETIMEDOUT, ECONNABORTED, ECONNRESET, EHOSTUNREACH as lwIP numbers them, DNS
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENOTCONN,  # as this port does
    32, 101, 116,  # none of its errno names: EPIPE and ENETUNREACH (Linux), ETIMEDOUT (ESP-IDF)
)


class DownloadError(Exception):
    """Why a download failed. reason: "http", "network", "timeout", "integrity", "file", "memory" or "tls"."""

    reason = "error"
    retry = False

    def __init__(self, msg, status=None, retry=None, retry_after=None):
        super().__init__(msg)
        self.status = status
        if retry is not None:
            self.retry = retry
        self.retry_after = retry_after  # the server's Retry-After, seconds


class HTTPError(DownloadError):
    reason = "http"


class NetworkError(DownloadError):
    reason = "network"
    retry = True


class DownloadTimeout(NetworkError):
    reason = "timeout"


class IntegrityError(DownloadError):
    reason = "integrity"


class LocalFileError(DownloadError):
    reason = "file"
    full = False  # the filesystem had no space left (ENOSPC)


class OutOfMemory(DownloadError):
    reason = "memory"


class TLSError(DownloadError):
    # the server's certificate did not verify against DownloadManager.ca: trying again cannot help
    reason = "tls"


class CallbackError(Exception):
    # What an app's callback raised, carried past the retries: the app's own, never retried, and raised to the
    # caller as it was (see Download._failed)
    def __init__(self, error):
        super().__init__(error)
        self.error = error


def _error_number(e):
    # An exception's error number, or None: an OSError carries a number, a negative one (ESP32, mbedTLS), a str
    # (the unix port's failed lookups: "[addrinfo error -3]") or nothing
    code = getattr(e, "errno", None)
    if code is None and e.args:
        code = e.args[0]
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def is_network_error(e):
    """True for errors worth retrying later: dropped, reset, timed-out or unreachable connections and DNS
    failures (unix and ESP32 errno numbers, also negated, as the network stack reports some)."""
    if isinstance(e, DownloadError):
        return isinstance(e, NetworkError)
    import asyncio

    if isinstance(e, asyncio.TimeoutError):
        return True
    try:
        from aiohttp import errors as client
    except ImportError:
        client = None
    if client is not None:
        if client.kind_of(e, "ClientSSLError") or client.kind_of(e, "ClientResponseError"):
            return False  # (an answer came: the network works, whatever its reason phrase says, "Gateway Timeout")
        if client.kind_of(e, "ClientConnectionError") or client.kind_of(e, "ClientPayloadError"):
            return True  # (a refused connection too: DownloadManager's NetworkError for it says True as well)
    code = _error_number(e)
    if code is not None and abs(code) in _NETWORK_CODES:
        return True
    msg = str(e).lower()
    # (one str, split when asked: a tuple of them would be built in the heap at import, run from ROMFS or .mpy)
    for words in ("connection reset|connection aborted|broken pipe|network unreachable|host unreachable|"
                  "failed to download chunk|timed out|timeout|etimedout|econnreset|econnaborted|ehostunreach|"
                  "addrinfo").split("|"):
        if words in msg:
            return True
    return False


def _refused(e):
    # A refused connection: nothing listens there, so trying again soon cannot help
    code = _error_number(e)
    return code is not None and abs(code) == errno.ECONNREFUSED


def classify(e, timeout):
    # What an attempt raised -> a DownloadError that says whether another try may help; None for what is not ours
    # to judge (an app's callback, a defect). timeout: the download's seconds per read, for the message.
    if isinstance(e, DownloadError):
        return e
    if isinstance(e, MemoryError):
        return OutOfMemory("out of memory")
    from aiohttp import errors as client  # (its kind_of tells the client's errors apart without making them)

    if client.kind_of(e, "ServerTimeoutError"):
        return DownloadTimeout("no answer within timeout=%ss (%s)" % (timeout, e))
    if client.kind_of(e, "ClientConnectorCertificateError"):
        return TLSError(str(e))
    if client.kind_of(e, "ClientPayloadError") or client.kind_of(e, "ServerDisconnectedError"):
        return NetworkError("connection lost: %s" % (e,))
    if isinstance(e, OSError) or client.kind_of(e, "ClientConnectionError"):
        return NetworkError("connection failed: %s" % (e,), retry=not _refused(e))
    if client.kind_of(e, "ClientResponseError"):
        return HTTPError("bad response: %s" % (e,), e.status)
    return None
