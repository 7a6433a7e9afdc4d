# Text in the charsets servers name, for ClientResponse.text() and json(): UTF-8 that is not valid, US-ASCII, latin-1
# and windows-1252, with the error handlers "strict", "replace" and "ignore". Loaded only when the body is not plain
# valid UTF-8: MicroPython's bytes.decode() knows UTF-8 alone (it ignores a charset and an error handler it is given).
# A body is worked through in spans, with a turn of the event loop (the UI's) after each: the bytes that are not ASCII
# take Python's time, one byte at a time, and a server chooses how many there are.

import asyncio
from micropython import const

from .utf8 import lax

_SPAN = const(1024)  # body bytes worked through between two turns of the event loop

_UTF8 = ("utf-8", "utf8", "u8", "utf")
_ASCII = ("ascii", "us-ascii", "646")
_LATIN1 = ("latin-1", "latin1", "latin", "l1", "iso-8859-1", "iso8859-1", "8859", "cp819", "iso-ir-100")
_WINDOWS_1252 = ("windows-1252", "cp1252")
_HANDLERS = ("strict", "replace", "ignore")

# windows-1252's characters for the bytes 0x80 to 0x9F (from 0xA0 up it is latin-1); U+FFFD: a byte it leaves undefined
_CP1252_HIGH = ("\u20ac\ufffd\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\ufffd\u017d\ufffd"
                "\ufffd\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\ufffd\u017e\u0178")
_REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = b"\xef\xbf\xbd"


async def decode(body, encoding, server_charset, errors):
    # encoding: the caller's (an unknown one is a LookupError, as in CPython); else the server's charset, where an
    # unknown one means UTF-8, as aiohttp's fallback has it
    name = _known(encoding or server_charset)
    if name is None:
        if encoding:
            raise LookupError("unknown encoding: %s" % encoding)
        name = "utf-8"
    if name == "utf-8":
        return await _utf8(body, errors, None if encoding or _known(server_charset) else server_charset)
    if name == "ascii":
        high = (None,) * 128
    elif name == "latin-1":
        high = tuple(chr(b).encode() for b in range(0x80, 0x100))
    else:
        high = tuple(None if char == _REPLACEMENT else char.encode() for char in _CP1252_HIGH)
        high += tuple(chr(b).encode() for b in range(0xA0, 0x100))
        name = "windows-1252"
    return await _one_byte_each(body, high, name, errors)


def _known(charset):
    # -> the charset's canonical name among those decoded here, or None
    if not charset:
        return None
    charset = charset.strip().lower().replace("_", "-")
    for name, aliases in (("utf-8", _UTF8), ("ascii", _ASCII), ("latin-1", _LATIN1), ("cp1252", _WINDOWS_1252)):
        if charset in aliases:
            return name
    return None


def _check_handler(errors):
    # (at the first error, as CPython looks for a handler)
    if errors not in _HANDLERS:
        raise LookupError("error handler %r is not supported" % (errors,))


def _bad_byte(byte, i, charset):
    return UnicodeError("can't decode byte 0x%02x in position %d as %s" % (byte, i, charset))


def _plain(span):
    # whether span (bytes, or a memoryview of them) is plain UTF-8 as MicroPython decodes it, -> its length in
    # characters, or -1: checked in C
    try:
        return len(str(span, "utf-8"))
    except UnicodeError:
        return -1


async def _one_byte_each(body, high, charset, errors):
    # A charset of one byte per character: ASCII below 0x80, from there high[byte - 0x80], the character's UTF-8
    # bytes (None: a byte the charset leaves undefined)
    try:
        text = body.decode()
        if len(text) == len(body):  # (a character per byte: all of them ASCII)
            return text
    except UnicodeError:
        pass
    out = bytearray()
    view = memoryview(body)
    for start in range(0, len(body), _SPAN):
        span = view[start : start + _SPAN]
        if _plain(span) == len(span):
            out += span
        else:
            _one_byte_span(out, span, start, high, charset, errors)
        await asyncio.sleep(0)
    return out.decode()


def _one_byte_span(out, span, start, high, charset, errors):
    append = out.append
    for byte in span:
        if byte < 0x80:
            append(byte)
            continue
        char = high[byte - 0x80]
        if char is None:
            _check_handler(errors)
            if errors == "strict":  # (the first undefined byte met: the first of its value in the span)
                raise _bad_byte(byte, start + bytes(span).find(bytes((byte,))), charset)
            char = _REPLACEMENT_BYTES if errors == "replace" else b""
        out += char


async def _utf8(body, errors, unsupported):
    # UTF-8 as the Unicode standard reads it (section 3.9): each maximal part of an ill-formed sequence is one error.
    # MicroPython's decode() where it agrees. unsupported: the charset the server named, when none decoded here.
    try:
        text = body.decode()
        if not lax(body):
            return text
    except UnicodeError:
        pass
    out = bytearray()
    view = memoryview(body)
    start = 0
    end = len(body)
    while start < end:
        stop = _boundary(body, start + _SPAN, end)
        span = bytes(view[start:stop])
        if _plain(span) >= 0 and not lax(span):
            out += span
        else:
            _utf8_span(out, body, start, stop, errors, unsupported)
        start = stop
        await asyncio.sleep(0)
    return out.decode()


def _boundary(body, i, end):
    # -> where a span that would end at i may end with no sequence cut in two: before a byte that is no continuation
    # byte, found within three bytes back; after three continuation bytes no sequence goes on, so i itself.
    if i >= end:
        return end
    for k in range(i, i - 4, -1):
        if not 0x80 <= body[k] <= 0xBF:
            return k
    return i


def _utf8_span(out, body, i, stop, errors, unsupported):
    # body[i:stop] onto out, its errors handled; the well-formed runs between them copied whole
    view = memoryview(body)
    end = len(body)
    run = i
    while i < stop:
        if body[i] < 0x80:
            i += 1
            continue
        size = _sequence(body, i, end)
        if size > 0:
            i += size
            continue
        _check_handler(errors)
        if errors == "strict":
            if unsupported:
                raise UnicodeError("charset %s is not supported, and the body is no UTF-8 (byte 0x%02x in position "
                                   "%d)" % (unsupported, body[i], i))
            raise _bad_byte(body[i], i, "utf-8")
        out += view[run:i]
        if errors == "replace":
            out += _REPLACEMENT_BYTES
        i -= size
        run = i
    out += view[run:stop]


def _sequence(body, i, end):
    # -> the length of the well-formed UTF-8 sequence at body[i] (not ASCII), or minus the length of its maximal
    # ill-formed part: the lead byte and the continuation bytes that could still have made a character
    lead = body[i]
    if 0xC2 <= lead <= 0xDF:
        size, low, high = 2, 0x80, 0xBF
    elif 0xE0 <= lead <= 0xEF:
        size = 3
        low, high = (0xA0, 0xBF) if lead == 0xE0 else (0x80, 0x9F) if lead == 0xED else (0x80, 0xBF)
    elif 0xF0 <= lead <= 0xF4:
        size = 4
        low, high = (0x90, 0xBF) if lead == 0xF0 else (0x80, 0x8F) if lead == 0xF4 else (0x80, 0xBF)
    else:
        return -1  # a continuation byte alone, or a byte no UTF-8 has (C0, C1, F5 to FF)
    k = 1
    while k < size:
        if i + k >= end or not low <= body[i + k] <= high:
            return -k
        low, high = 0x80, 0xBF  # (only the second byte has a narrower range)
        k += 1
    return size
