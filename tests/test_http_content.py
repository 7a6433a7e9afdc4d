"""aiohttp client on MicroPython: resp.content, aiohttp's StreamReader over the body (readline, readuntil,
readexactly, readchunk, at_eof...), and resp.read() that answers the same body again."""
import hashlib
import textwrap
from itertools import accumulate, cycle

import pytest

from tools.testservers import text_payload

FRAMINGS = ["", "&chunked=1&chunks=1,7,300", "&gzip=1", "&trickle=1"]


def in_a_response(mpy, reads, **values):
    """Runs reads, MicroPython lines that read resp (a GET of URL) and report with result()"""
    return mpy.run("import asyncio, aiohttp\nasync def main():\n    async with aiohttp.ClientSession() as session:\n"
                   "        async with session.get(URL) as resp:\n" + textwrap.indent(reads, " " * 12)
                   + "run(main())\n", **values)


@pytest.mark.parametrize("query", FRAMINGS)
def test_reads_of_every_kind_take_turns_without_losing_a_byte(mpy, fault, query):
    # Whatever a read took past a line's end is handed out by the next read, whichever it is
    r = in_a_response(mpy, """
content = resp.content
parts = [await content.readline(), await content.readline()]
parts.append(await content.readuntil(b"of the"))
parts.append(await content.readexactly(10))
parts.append((await content.readchunk())[0])
parts.append(await content.read(5))
buf = bytearray(7)
parts.append(bytes(buf[:await content.readinto(buf)]))
parts.append(await content.readline())
parts.append(await content.read())
result(sha=sha256(b"".join(parts)), lines=parts[:3], exact=len(parts[3]), eof=content.at_eof(),
       is_eof=content.is_eof(), error=content.exception(), after=await content.read(),
       line_after=await content.readline())
""", URL=fault.url("/bytes/20000?text=1" + query))
    whole = text_payload(20000)
    assert r.value == {"sha": hashlib.sha256(whole).hexdigest(),
                       "lines": ["line 0 of the payload\n", "line 1 of the payload\n", "line 2 of the"],
                       "exact": 10, "eof": True, "is_eof": True, "error": None, "after": "", "line_after": ""}


@pytest.mark.parametrize("query", FRAMINGS)
def test_readuntil_finds_a_separator_that_spans_reads(mpy, fault, query):
    r = in_a_response(mpy, """
pieces = []
while True:
    piece = await resp.content.readuntil(b" of the payload\\n")
    if not piece:
        break
    pieces.append(piece)
result(sha=sha256(b"".join(pieces)), n=len(pieces),
       ends=all(p.endswith(b" of the payload\\n") for p in pieces[:-1]))
""", URL=fault.url("/bytes/20000?text=1" + query))
    whole = text_payload(20000)
    assert r.value == {"sha": hashlib.sha256(whole).hexdigest(), "n": whole.count(b"\n") + 1, "ends": True}


def test_readexactly_past_the_end_is_asyncios_incomplete_read_error(mpy, fault):
    r = in_a_response(mpy, """
head = await resp.content.readexactly(4000)
try:
    await resp.content.readexactly(2000)
except asyncio.IncompleteReadError as e:
    result(head=len(head), partial=sha256(e.partial), expected=e.expected, eof=isinstance(e, EOFError))
""", URL=fault.url("/bytes/5000?text=1"))
    assert r.value == {"head": 4000, "partial": hashlib.sha256(text_payload(5000)[4000:]).hexdigest(),
                       "expected": 2000, "eof": True}


@pytest.mark.parametrize("query, chunked", [("?chunked=1&chunks=1,7,3000", True), ("", False)])
def test_readchunk_tells_where_each_http_chunk_ends(mpy, fault, query, chunked):
    r = in_a_response(mpy, """
at, ends, parts = 0, [], []
async for data, end_of_chunk in resp.content.iter_chunks():
    parts.append(data)
    at += len(data)
    if end_of_chunk:
        ends.append(at)
result(sha=sha256(b"".join(parts)), ends=ends, last=await resp.content.readchunk())
""", URL=fault.url("/bytes/5000" + query))
    boundaries = [end for end in accumulate(size for size, _ in zip(cycle([1, 7, 3000]), range(5000))) if end < 5000]
    assert r.value["ends"] == (boundaries + [5000] if chunked else [])
    assert r.value["last"] == ["", False]


def test_read_answers_the_same_body_again_and_content_read_ends(mpy, fault):
    # aiohttp keeps the body: resp.read() twice is the body twice, and text() the same; the stream itself is over
    r = in_a_response(mpy, """
first = await resp.read()
again = await resp.read()
result(first=sha256(first), again=sha256(again), text=len(await resp.text()),
       stream=await resp.content.read(), some=await resp.content.read(10))
""", URL=fault.url("/bytes/3000?text=1&chunked=1"))
    sha = hashlib.sha256(text_payload(3000)).hexdigest()
    assert r.value == {"first": sha, "again": sha, "text": 3000, "stream": "", "some": ""}


def test_iter_chunked_of_zero_yields_nothing_and_of_a_negative_size_yields_the_rest(mpy, fault):
    # as aiohttp: iter_chunked(n) yields read(n) until b"", and read(0) is b"", read(-1) the rest
    r = in_a_response(mpy, """
none, rest = [], []
async for chunk in resp.content.iter_chunked(0):
    none.append(chunk)
async for chunk in resp.content.iter_chunked(-1):
    rest.append(sha256(chunk))
result(none=none, rest=rest)
""", URL=fault.url("/bytes/3000?text=1"))
    assert r.value == {"none": [], "rest": [hashlib.sha256(text_payload(3000)).hexdigest()]}


@pytest.mark.parametrize("query", ["length=8000", "chunked=1&nolast=1"])
def test_exception_tells_what_cut_the_body_short(mpy, fault, query):
    # a body that ends before its Content-Length, a chunked body without its last chunk
    r = in_a_response(mpy, """
before = resp.content.exception()
try:
    await resp.content.read()
except aiohttp.ClientPayloadError as e:
    result(before=before, same=resp.content.exception() is e, error=str(e))
""", URL=fault.url("/bytes/5000?" + query))
    cut = "connection closed early" if query.startswith("length") else "chunked body cut short"
    assert r.value == {"before": None, "same": True, "error": "response payload is not completed (%s)" % cut}


def test_content_has_the_stream_readers_names_only(mpy, fault):
    # resp.content is aiohttp's StreamReader: a name of the response (status, text, json...) or a misspelt read is
    # an AttributeError there, as in aiohttp, not the response's attribute answered through the content
    r = in_a_response(mpy, """
missing = []
for name in ("status", "headers", "text", "json", "release", "ok", "url", "raed", "_conn"):
    try:
        getattr(resp.content, name)
        missing.append(name + " answered")
    except AttributeError as e:
        missing.append(str(e))
body = await resp.content.read()
result(missing=missing, total=resp.content.total_bytes, n=len(body), has=hasattr(resp.content, "readline"))
""", URL=fault.url("/bytes/3000"))
    names = ("status", "headers", "text", "json", "release", "ok", "url", "raed", "_conn")
    assert r.value == {"missing": ["'Content' object has no attribute '%s'" % name for name in names],
                       "total": 3000, "n": 3000, "has": True}, r.value
