# A Location header (or a URL relative to a session's base_url) resolved against the URL it came with, as RFC 3986
# section 5.2 does, and where a redirect may lead. Loaded on the first redirect or base_url.

from . import errors
from .url import host_port, split_url


def redirect(resp, url, fields, allow_downgrade):
    # -> the URL the redirect resp (to a request for url) leads to; the credentials and Host meant for another origin
    # are dropped from fields, the request's header fields
    try:
        new = join_url(url, resp.headers["Location"])
        new_origin = split_url(new)[:3]
    except errors.InvalidURL as e:  # the server's URL, not the caller's: a bad response
        raise errors.InvalidUrlRedirectClientError(resp.status, "bad redirect: %s" % e)
    origin = split_url(url)[:3]
    if origin[0] == "https" and new_origin[0] == "http" and not allow_downgrade:
        raise errors.ClientResponseError(resp.status, "refused redirect from https to http: %s" % new)
    if new_origin != origin:
        for name in ("authorization", "cookie", "host"):
            fields.pop(name, None)
    return new


def join_url(base, location):
    """Resolve a Location header against the URL it came from, as RFC 3986 section 5.2 does: absolute,
    //host, /path, relative, ?query, with "." and ".." segments taken out. The fragment is dropped: it is
    never sent, and a Location of "#part" alone means the same resource. A space is sent as %20, as browsers and
    curl send it: nginx and apache put a path they were given with one in a Location as it is."""
    location = location.split("#", 1)[0].replace(" ", "%20")
    if location.startswith("//"):
        location = split_url(base)[0] + ":" + location
    if is_absolute(location):  # (split_url says whether it is a scheme we speak)
        i = location.find("/", location.find("://") + 3) if "://" in location else -1
        if i < 0:
            return location
        path, question, query = location[i:].partition("?")  # its dot segments go too (RFC 3986 section 5.2.2)
        return location[:i] + _without_dots(path) + question + query
    scheme, host, port, target = split_url(base)
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
