# URLs split into what a request needs. Resolving a Location against one is location.py's job, form encoding
# form.py's: loaded only when a request needs them.

from . import errors


def split_url(url):
    """-> (scheme, host, port, target). Raises InvalidURL naming the problem (as aiohttp: NonHttpUrlClientError
    for another scheme, else InvalidUrlClientError)."""
    if not isinstance(url, str):
        raise errors.InvalidUrlClientError("URL must be str, not %s" % type(url).__name__)
    # (its bytes, not its characters: each character iterated would be a str of its own, looked up among the qstrs)
    data = url.encode()
    if data and (min(data) <= 32 or b"\x7f" in data):  # (a bytes in bytes is searched in C, an int byte by byte)
        raise errors.InvalidUrlClientError("URL contains whitespace or a control character: %r" % url)
    i = url.find("://")
    if i < 0:
        raise errors.InvalidUrlClientError("URL has no scheme: %r" % url)
    scheme = url[:i].lower()
    if scheme not in ("http", "https"):
        raise errors.NonHttpUrlClientError("unsupported URL scheme %r (only http and https)" % scheme)
    rest = url[i + 3 :]
    end = len(rest)
    for k in (rest.find("/"), rest.find("?"), rest.find("#")):
        if 0 <= k < end:
            end = k
    authority, target = rest[:end], rest[end:]
    target = target.split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    if "@" in authority:  # (the message, which apps log, leaves the password out)
        raise errors.InvalidUrlClientError("credentials in the URL are not supported (auth=BasicAuth(...) is): "
                                           "%s://...@%s" % (scheme, authority.rsplit("@", 1)[1]))
    port = default_port(scheme)
    if authority.startswith("["):  # an IPv6 literal
        k = authority.find("]")
        if k < 0:
            raise errors.InvalidUrlClientError("bad IPv6 address in %r" % url)
        host, tail = authority[1:k], authority[k + 1 :]
    else:
        host, colon, digits = authority.partition(":")
        tail = colon + digits
    if tail:
        digits = tail[1:]
        if tail[0] != ":" or not digits.isdigit() or not 0 < int(digits) < 65536:
            raise errors.InvalidUrlClientError("bad port in URL: %r" % url)
        port = int(digits)
    if not host:
        raise errors.InvalidUrlClientError("URL has no host: %r" % url)
    return scheme, host, port, target


def default_port(scheme):
    return 443 if scheme == "https" else 80


def host_port(scheme, host, port):
    # the Host header's form: the port only when it is not the scheme's own
    h = "[%s]" % host if ":" in host else host
    return h if port == default_port(scheme) else "%s:%d" % (h, port)
