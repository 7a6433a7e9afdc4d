# URLs: split into what a request needs, Locations resolved against them (RFC 3986), form encoding.

from micropython import const

from . import errors

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SPACE = const(0x20)
_DEL = const(0x7F)


def split_url(url):
    """-> (scheme, host, port, target). Raises InvalidURL naming the problem."""
    if not isinstance(url, str):
        raise errors.InvalidURL("URL must be str, not %s" % type(url).__name__)
    # (its bytes, not its characters: each character iterated would be a str of its own, looked up among the qstrs)
    data = url.encode()
    if data and (min(data) <= 32 or 127 in data):
        raise errors.InvalidURL("URL contains whitespace or a control character: %r" % url)
    i = url.find("://")
    if i < 0:
        raise errors.InvalidURL("URL has no scheme: %r" % url)
    scheme = url[:i].lower()
    if scheme not in ("http", "https"):
        raise errors.InvalidURL("unsupported URL scheme %r (only http and https)" % scheme)
    rest = url[i + 3 :]
    end = len(rest)
    for k in (rest.find("/"), rest.find("?"), rest.find("#")):
        if 0 <= k < end:
            end = k
    authority, target = rest[:end], rest[end:]
    target = target.split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    if "@" in authority:
        raise errors.InvalidURL("credentials in the URL are not supported: %r" % url)
    port = default_port(scheme)
    if authority.startswith("["):  # an IPv6 literal
        k = authority.find("]")
        if k < 0:
            raise errors.InvalidURL("bad IPv6 address in %r" % url)
        host, tail = authority[1:k], authority[k + 1 :]
    else:
        host, colon, digits = authority.partition(":")
        tail = colon + digits
    if tail:
        digits = tail[1:]
        if tail[0] != ":" or not digits.isdigit() or not 0 < int(digits) < 65536:
            raise errors.InvalidURL("bad port in URL: %r" % url)
        port = int(digits)
    if not host:
        raise errors.InvalidURL("URL has no host: %r" % url)
    return scheme, host, port, target


def default_port(scheme):
    return 443 if scheme == "https" else 80


def host_port(scheme, host, port):
    # the Host header's form: the port only when it is not the scheme's own
    h = "[%s]" % host if ":" in host else host
    return h if port == default_port(scheme) else "%s:%d" % (h, port)


def join_url(base, location):
    """Resolve a Location header against the URL it came from, as RFC 3986 section 5.2 does: absolute,
    //host, /path, relative, ?query, with "." and ".." segments taken out. The fragment is dropped: it is
    never sent, and a Location of "#part" alone means the same resource."""
    location = location.split("#", 1)[0]
    if is_absolute(location):
        return location  # split_url says whether it is a scheme we speak
    scheme, host, port, target = split_url(base)
    if location.startswith("//"):
        return scheme + ":" + location
    path = target.split("?", 1)[0]
    if not location:
        location = target
    elif location.startswith("?"):
        location = path + location
    elif not location.startswith("/"):
        location = path[: path.rfind("/") + 1] + location
    path, question, query = location.partition("?")
    return "%s://%s%s%s%s" % (scheme, host_port(scheme, host, port), _without_dots(path), question, query)


def is_absolute(url):
    # whether url starts with a scheme, "http:" or "mailto:" ("/a/http://b" does not)
    i = url.find(":")
    return i > 0 and url[0].isalpha() and all(c.isalpha() or c.isdigit() or c in "+-." for c in url[1:i])


def _without_dots(path):
    # "/a/b/../c/./d" -> "/a/c/d" (RFC 3986 remove_dot_segments, for a path that starts with "/")
    segments = path.split("/")
    if "." not in segments and ".." not in segments:
        return path
    out = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(out)


def _quote(value):
    # one name or value, form-encoded: letters, digits and -._~ as they are, space as "+", every other byte of
    # its UTF-8 as %XX, so no value can add a field ("&"), end the query ("#") or a line (CR LF)
    value = (value if isinstance(value, str) else str(value)).encode()
    return "".join(chr(b) if b in _UNRESERVED else "+" if b == _SPACE else "%%%02X" % b for b in value)


def form_encode(pairs):
    # data= or params= (a dict, or (name, value) pairs) as application/x-www-form-urlencoded text; params= may be
    # a query string already, as in aiohttp: what no query can hold in it is encoded, a space as "+"
    if isinstance(pairs, str):
        data = pairs.encode()
        return "".join(chr(b) if _SPACE < b < _DEL and b not in b'"#<>[\\]^`{|}' else "+" if b == _SPACE
                       else "%%%02X" % b for b in data)  # (RFC 3986 section 3.4: what a query may hold as it is)
    if hasattr(pairs, "items"):
        pairs = pairs.items()
    return "&".join("%s=%s" % (_quote(k), _quote(v)) for k, v in pairs)
