# Form encoding (application/x-www-form-urlencoded) for params= and data=: loaded on first use.

from micropython import const

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SPACE = const(0x20)
_DEL = const(0x7F)


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
