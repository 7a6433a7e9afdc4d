"""A seeded mutation fuzzer for the HTTP client and DownloadManager (CPython side; tests/test_fuzz.py runs it).

Case i of seed s is fully determined by (s, i): what the client asks for (API, mode, Range, sha256=, read sizes),
the well-formed HTTP/1.1 answer a server could give (Content-Length, chunked with extensions and trailers,
close-delimited; gzip, x-gzip or deflate; 206 to a Range; interim 1xx heads) and the mutations made to it (bit
flips, byte inserts and deletes in the head, the chunk framing and the body, numbers swapped for odd ones, header
lines duplicated or removed, an early close, a reset or a stall, the writes split with pauses).

FuzzServer answers a case's first request with the mutated bytes and each later one (a DownloadManager retry) as
the case says: with a clean answer that honours Range and If-Range, with the same mutated bytes, or with a 410.
The oracle, judge(), reads the mutated bytes with a strict HTTP/1.1 reader of our own (decode(), below) and says
what a correct client may give back: the resource's exact bytes, the body the strict reader decodes, for
DownloadManager a resume that continues the first answer's bytes with the resource's, or a clean failure. A
result with only timing changed (splits, pauses) must be exact, and so must a resume of a cut answer.

Why our own reader and not h11: h11 refuses what a client may accept (obs-fold, Transfer-Encoding together with
Content-Length) and stops there, while the oracle needs this project's rules written out, in one place:
- chunked in Transfer-Encoding wins over Content-Length; any other transfer coding is a failure, and so is any
  transfer coding in an HTTP/1.0 answer (RFC 9112 section 6.1);
- a Content-Encoding other than gzip, x-gzip, deflate (zlib) and identity is a failure; codings stack; "none",
  "utf-8" and "utf8" are identity (what servers send meaning it);
- a body shorter than its Content-Length, a chunked body cut short, a bad Content-Length are failures;
- header and trailer names are tokens, blanks before their colon dropped; a line may end in a bare LF; obs-fold
  joins lines with a space;
- 1xx heads (but 101) come before the answer; 101, 204 and 304 have no body.

    python tools/fuzz.py SEED CASE    # the case: request, answer as sent, mutations, the strict reader's verdict
    FUZZ_SEED=SEED FUZZ_CASE=CASE .venv/bin/python -m pytest tests/test_fuzz.py    # run that case alone
"""
import fcntl
import hashlib
import json
import os
import queue
import random
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.mpy import HEAP, LIB, TESTLIB, micropypath, micropython  # noqa: E402
from tools.testservers import send_close_notify  # noqa: E402

SIOCOUTQ = 0x5411  # Linux: bytes in a socket's send queue, not yet acknowledged
HOST = "127.0.0.1"
READ_TIMEOUT = 0.5  # seconds: the client's per-read timeout in every case, so a stall is found fast
DEADLINE = 5  # seconds: the client's bound on a whole case (DownloadManager deadline=, aiohttp total=)
HANG_S = DEADLINE + 10  # no answer from MicroPython for this long: it hangs (it is killed and restarted)
OLD = b"the previous file\n"  # what OUTFILE holds before a file-mode case that has one
LONG_SHARE = 0.04  # of the cases: a resource of 64 KB to ~300 KB, mutated near the fair share's multiples and the end
FAIR_SHARE = 65536  # aiohttp's connection.FAIR_SHARE: bytes read without a wait before other tasks get a turn

TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNCODED = (b"identity", b"none", b"utf-8", b"utf8")
_CODINGS = (b"gzip", b"x-gzip", b"deflate") + _UNCODED


# ---------------------------------------------------------------- the case

@dataclass
class Case:
    seed: str
    index: int
    api: str  # "dm" (DownloadManager) or "aiohttp"
    mode: str  # dm: memory, file, stream; aiohttp: read, readinto, readn
    resource: bytes
    etag: str
    byte_range: tuple = None  # the Range asked for: (lo, hi or None)
    sha: bool = False  # dm: sha256= given
    raise_errors: bool = False  # dm
    chunk: int = None  # dm chunk_size=, aiohttp read size
    progress: bool = False  # dm: a progress_callback is given
    old_file: bool = False  # dm file mode: OUTFILE exists before
    framing: str = ""  # of the well-formed answer: length, chunked, close
    coding: str = ""  # of the well-formed answer: "", gzip, x-gzip, deflate
    status: int = 200  # of the well-formed answer
    well_formed: bytes = b""
    wire: bytes = b""  # what the server sends (mutated), up to the end or the stall
    writes: list = field(default_factory=list)  # [(end offset, pause seconds)]: how the wire is split
    ending: str = "keep"  # keep (the connection serves on), close, reset, stall
    retries: str = "clean"  # how later requests are answered: clean (clean_answer), same (mutated), gone (410)
    mutations: list = field(default_factory=list)  # what changed, in words
    good: bytes = b""  # the resource the next request on the same session fetches
    persistent: bool = True  # the well-formed answer leaves its connection open for the next request
    tls: bool = False  # the answer goes over TLS, each write a record of its own
    long: bool = False  # a long resource (LONG_SHARE), its mutations placed near hot spots (_hot_spot)
    deadline: float = None  # the client's bound on the download (seconds), when shorter than DEADLINE

    @property
    def name(self):
        return "seed %s case %d" % (self.seed, self.index)

    @property
    def bound_ms(self):
        # a case that takes longer is a defect
        return ((self.deadline or DEADLINE) + 1) * 1000

    @property
    def changed(self):
        # the answer's bytes differ from the well-formed one (not only its timing, its end or a stall)
        return any(not m.startswith(("close ", "reset ", "stall ")) for m in self.mutations)

    @property
    def wanted(self):
        # the resource's bytes the request asks for
        if self.byte_range is None:
            return self.resource
        lo, hi = self.byte_range
        return self.resource[lo:None if hi is None else hi + 1]

    @property
    def range_header(self):
        if self.byte_range is None:
            return None
        lo, hi = self.byte_range
        return "bytes=%d-%s" % (lo, "" if hi is None else hi)


def _pick(rng, weighted):
    # weighted: [(weight, value)]
    x = rng.random() * sum(w for w, _ in weighted)
    for w, v in weighted:
        x -= w
        if x < 0:
            return v
    return weighted[-1][1]


def _resource(rng, size):
    if rng.random() < 0.5:
        return rng.randbytes(size)
    lines = b"".join(b"line %d of a resource %d\n" % (i, rng.randrange(1000)) for i in range(size // 20 + 1))
    return lines[:size]


def make_case(seed, index):
    """Case `index` of `seed`: the same every time."""
    rng = random.Random("%s:%d" % (seed, index))
    size = _pick(rng, [(1, 0), (3, rng.randint(1, 16)), (10, rng.randint(17, 1500)), (8, rng.randint(1500, 12000)),
                       (2, rng.randint(12000, 48000))])
    # a long case draws its own choices apart, so every other case is what it was before long cases existed
    long_rng = random.Random("%s:%d:long" % (seed, index))
    long = long_rng.random() < LONG_SHARE
    if long:
        size = long_rng.randint(FAIR_SHARE, 300000)
    case = Case(seed=str(seed), index=index, api=_pick(rng, [(6, "dm"), (4, "aiohttp")]), mode="",
                resource=_resource(rng, size), etag='"%08x"' % rng.getrandbits(32))
    if case.api == "dm":
        case.mode = rng.choice(["memory", "file", "stream"])
        case.sha = rng.random() < 0.5
        case.raise_errors = rng.random() < 0.5
        case.progress = rng.random() < 0.3
        case.old_file = case.mode == "file" and rng.random() < 0.5
        if rng.random() < 0.5:
            case.chunk = rng.choice([1, 3, 100, 512, 1000, 4096])
    else:
        case.mode = rng.choice(["read", "readinto", "readn"])
        case.chunk = rng.choice([1, 7, rng.randint(2, 5000), 1024])
    if long:
        case.long = True
        if case.api == "aiohttp" and case.chunk < 100:
            case.chunk = long_rng.choice([100, 1024, 4096])  # a byte at a time through 300 KB would take too long
        if long_rng.random() < 0.6:  # DownloadManager's straight lane: file mode with nothing else to do per chunk
            case.api, case.mode, case.sha, case.progress = "dm", "file", False, False
            case.chunk = long_rng.choice([None, 100, 1000, 4096, 16384])
            case.old_file = long_rng.random() < 0.5
        elif case.api == "dm" and case.chunk is not None and case.chunk < 100:
            case.chunk = long_rng.choice([None, 512, 4096])
    if size >= 2 and rng.random() < 0.2:
        lo = rng.randrange(size)
        if case.mode == "file" and lo == len(OLD):
            lo += 1  # "bytes=N-" with N = the old file's size would be a resume of it (see docs/decisions.md)
        case.byte_range = (lo, None if rng.random() < 0.5 else rng.randint(lo, size + 10))
        if lo >= size:
            case.byte_range = None
    case.retries = _pick(rng, [(6, "clean"), (2, "same"), (2, "gone")])
    case.good = _resource(rng, rng.randint(0, 3000))
    answer = _well_formed(rng, case)
    case.well_formed = bytes(answer.data)
    _mutate(long_rng if long else rng, case, answer)
    case.tls = rng.random() < 0.3  # drawn last: the rest of a case is what it was before TLS cases existed
    if long:
        case.tls = long_rng.random() < 0.5
        if long_rng.random() < 0.15:  # a deadline= that may expire mid-body, across a fair-share turn
            case.deadline = round(long_rng.uniform(0.005, 0.15), 3)
            if len(case.writes) < 4 and len(case.wire) > 1:
                case.writes = _split(long_rng, len(case.wire), 8, 16)
    return case


# ---------------------------------------------------------------- the well-formed answer

class _Wire:
    # An answer's bytes and what each part of them is: "head", "framing" (chunk-size lines, the CRLF after chunk
    # data, trailers) or "body" (payload bytes), as spans [start, end, kind] kept right through inserts and deletes.
    def __init__(self):
        self.data = bytearray()
        self.spans = []
        self.head = None  # the span of the answer's own head

    def add(self, b, kind):
        if b:
            self.spans.append([len(self.data), len(self.data) + len(b), kind])
            self.data += b

    def position(self, rng, kinds):
        # a byte position in one of the kinds, every byte of them equally likely; None if there is none
        spans = [s for s in self.spans if s[2] in kinds and s[1] > s[0]]
        total = sum(e - s for s, e, _ in spans)
        if not total:
            return None
        x = rng.randrange(total)
        for s, e, _ in spans:
            if x < e - s:
                return s + x
            x -= e - s

    def nearest(self, pos, kinds):
        # the byte position in one of the kinds nearest to pos; None if there is none
        spans = [s for s in self.spans if s[2] in kinds and s[1] > s[0]]
        return min((min(max(pos, s), e - 1) for s, e, _ in spans), key=lambda p: abs(p - pos), default=None)

    def body_offset(self, k):
        # the position of payload byte k (as sent: coded, if it is); past the last one, the end of the body
        end = 0
        for s, e, kind in self.spans:
            if kind == "body":
                if k < e - s:
                    return s + k
                k -= e - s
                end = e
        return end

    def kind(self, pos):
        for s, e, k in self.spans:
            if s <= pos < e:
                return k
        return "end"

    def replace(self, pos, n, new):
        # bytes [pos, pos + n) become new; the spans after them move
        self.data[pos:pos + n] = new
        d = len(new) - n
        for s in self.spans:
            if s[0] > pos:
                s[0] = max(pos, s[0] + d)
            if s[1] > pos:
                s[1] = max(pos, s[1] + d)


def _code(coding, body):
    if coding in ("gzip", "x-gzip"):
        z = zlib.compressobj(wbits=31)
        return z.compress(body) + z.flush()
    if coding == "deflate":
        return zlib.compress(body)
    return body


_REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 206: "Partial Content", 404: "Not Found", 410: "Gone",
            416: "Range Not Satisfiable"}


def _well_formed(rng, case):
    # A valid answer to the case's request, as a real server could send it.
    full = case.resource
    n = len(full)
    version = "HTTP/1.0" if rng.random() < 0.05 else "HTTP/1.1"
    case.framing = _pick(rng, [(45, "length"), (40 if version == "HTTP/1.1" else 0, "chunked"), (15, "close")])
    fields = [("Content-Type", rng.choice(["application/octet-stream", "text/plain; charset=utf-8"])),
              ("ETag", case.etag), ("Server", "fuzz/1.0"), ("Date", "Sat, 21 Nov 2026 10:00:00 GMT")]
    if rng.random() < 0.3:
        fields.append(("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"))
    if case.byte_range is not None and rng.random() < 0.8:  # else the server ignores the Range, as it may
        lo, hi = case.byte_range
        hi = n - 1 if hi is None else min(hi, n - 1)
        case.status, body = 206, full[lo:hi + 1]
        fields.append(("Content-Range", "bytes %d-%d/%d" % (lo, hi, n)))
    else:
        fields.append(("Accept-Ranges", "bytes"))
        body = full
        if rng.random() < (0.1 if case.long else 0.35):  # (a coded body is never read straight)
            case.coding = rng.choice(["gzip", "x-gzip", "deflate"])
            body = _code(case.coding, body)
            fields.append(("Content-Encoding", case.coding))
    if case.framing == "length":
        fields.append(("Content-Length", str(len(body))))
    elif case.framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
    case.persistent = not (case.framing == "close" or version == "HTTP/1.0" or rng.random() < 0.1)
    if not case.persistent:
        fields.append(("Connection", "close"))
    elif rng.random() < 0.3:
        fields.append(("Connection", "keep-alive"))
    for k in range(rng.randrange(3)):
        fields.append(("X-Fuzz-%d" % k, "".join(rng.choice("abcdef0123456789-.") for _ in range(rng.randint(0, 30)))))
    rng.shuffle(fields)
    wire = _Wire()
    if rng.random() < 0.1:  # an interim answer first
        wire.add(rng.choice([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\n"
                             b"Link: </style.css>; rel=preload\r\n\r\n"]), "head")
    wire.add(_head(rng, version, case.status, fields), "head")
    wire.head = wire.spans[-1]  # the answer's own head, not an interim one
    if case.framing == "chunked":
        _chunked(rng, wire, body, case.long)
    else:
        wire.add(body, "body")
    return wire


def _head(rng, version, status, fields):
    lines = ["%s %d %s" % (version, status, _REASONS[status])]
    for name, value in fields:
        name = _pick(rng, [(8, name), (1, name.lower()), (1, name.upper())])
        sep = _pick(rng, [(8, ": "), (1, ":"), (1, ":  ")])
        lines.append("%s%s%s%s" % (name, sep, value, " " if rng.random() < 0.05 else ""))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunked(rng, wire, body, long=False):
    pos = 0
    while pos < len(body):
        sizes = [(3, rng.randint(1, 16)), (5, rng.randint(17, 2000)), (1, rng.randint(2000, 9000))]
        if long:  # chunks that span a fair share too
            sizes.append((4, rng.randint(9000, 2 * FAIR_SHARE)))
        k = min(len(body) - pos, _pick(rng, sizes))
        wire.add(_size_line(rng, k), "framing")
        wire.add(body[pos:pos + k], "body")
        wire.add(b"\r\n", "framing")
        pos += k
    wire.add(_size_line(rng, 0), "framing")
    for i in range(_pick(rng, [(3, 0), (1, rng.randint(1, 2))])):
        wire.add(b"X-Trailer-%d: %d\r\n" % (i, rng.randrange(10 ** 6)), "framing")
    wire.add(b"\r\n", "framing")


def _size_line(rng, k):
    digits = _pick(rng, [(6, "%x"), (2, "%X"), (1, "00%x")]) % k
    ext = _pick(rng, [(8, ""), (1, ";name"), (1, ";name=value"), (1, ';q="a;b"'), (1, " ; x = 1")])
    return ("%s%s\r\n" % (digits, ext)).encode()


# ---------------------------------------------------------------- mutations

_BYTES = b"\r\n:; \t0129afAFx,-\x00\xff\""


# header lines a mutation may add: framing and codings that conflict with the answer's own or are unknown
_ADDED = (b"Content-Length: %d\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
          b"Content-Encoding: br\r\n", b"Content-Encoding: identity\r\n", b"Content-Encoding: gzip\r\n",
          b"Content-Range: bytes 0-%d/*\r\n", b"Connection: close\r\n")


def _mutate_lines(rng, case, wire):
    # a header line of the answer's own head duplicated or removed, or one added
    start, end, _ = wire.head
    # the field lines: not the status line, nor the blank one
    lines = [m.span() for m in re.finditer(rb"[^\n]*\n", bytes(wire.data[start:end]))][1:-1]
    if not lines:
        return
    s, e = rng.choice(lines)
    line = bytes(wire.data[start + s:start + e])
    how = rng.choice(["duplicated", "removed", "added"])
    if how == "removed":
        wire.replace(start + s, e - s, b"")
    else:
        if how == "added":
            line = rng.choice(_ADDED)
            if b"%d" in line:
                line %= max(0, len(case.wanted) + rng.randint(-2, 2))
        wire.replace(start + rng.choice(lines)[0], 0, line)
    case.mutations.append("%s header line %r" % (how, line))


def _hot_spot(rng, wire):
    # For a long case: a position near a multiple of FAIR_SHARE bytes of body or of the answer, or near its end,
    # where a reader that reads the fair share without waiting takes its turn or meets the body's end.
    n = len(wire.data)
    body = sum(e - s for s, e, kind in wire.spans if kind == "body")
    spot = _pick(rng, [(4, wire.body_offset(FAIR_SHARE * rng.randint(1, max(1, body // FAIR_SHARE)))),
                       (2, FAIR_SHARE * rng.randint(1, max(1, n // FAIR_SHARE))), (2, wire.body_offset(body)),
                       (1, n)])
    spot += _pick(rng, [(3, 0), (4, rng.randint(-16, 16)), (2, rng.randint(-4096, 4096))])
    return max(0, min(spot, n))


def _long_mutations(rng, case, wire):
    # what only a long answer gets: a Content-Length near the body's length or a fair share's multiple, bytes
    # after the answer's end
    if case.framing == "length" and rng.random() < 0.15:
        start, end, _ = wire.head
        m = re.search(rb"(?im)^content-length:[ \t]*([0-9]+)", bytes(wire.data[start:end]))
        if m:
            old = int(m.group(1))
            new = max(0, _pick(rng, [(2, old), (1, FAIR_SHARE * rng.randint(1, old // FAIR_SHARE + 1))])
                      + rng.randint(-3, 3))
            if new != old:
                wire.replace(start + m.start(1), len(m.group(1)), b"%d" % new)
                case.mutations.append("Content-Length %d -> %d" % (old, new))
    if rng.random() < 0.15:
        extra = rng.choice([b"\r\n", b"0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                            rng.randbytes(rng.randint(1, 200))])
        wire.add(extra, "framing")
        case.mutations.append("appended %d bytes after the answer: %r" % (len(extra), _shown(extra, 40)))


def _mutate(rng, case, wire):
    # byte mutations, then how the answer ends (early close, reset, stall), then how its writes are split
    if rng.random() < 0.12:
        _mutate_lines(rng, case, wire)
    if case.long:
        _long_mutations(rng, case, wire)
    kinds = {"head": 4, "framing": 3, "body": 3}
    for _ in range(_pick(rng, [(25, 0), (50, 1), (15, 2), (10, 3)])):
        where = _pick(rng, [(w, k) for k, w in kinds.items()])
        pos = wire.position(rng, (where,))
        if pos is None:
            continue
        if case.long and where != "head" and rng.random() < 0.8:
            pos = wire.nearest(_hot_spot(rng, wire), (where,))
        how = _pick(rng, [(4, "flip"), (3, "insert"), (3, "delete"), (2 if where != "body" else 0, "number")])
        if how == "flip":
            bit = rng.randrange(8)
            old = wire.data[pos]
            wire.replace(pos, 1, bytes([old ^ 1 << bit]))
            case.mutations.append("flipped bit %d of byte %d (%s): %r -> %r"
                                  % (bit, pos, where, bytes([old]), bytes([old ^ 1 << bit])))
        elif how == "insert":
            b = bytes([rng.choice(_BYTES) if rng.random() < 0.7 else rng.randrange(256)])
            wire.replace(pos, 0, b)
            case.mutations.append("inserted %r before byte %d (%s)" % (b, pos, where))
        elif how == "delete":
            case.mutations.append("deleted byte %d (%s): %r" % (pos, where, bytes(wire.data[pos:pos + 1])))
            wire.replace(pos, 1, b"")
        else:
            _swap_number(rng, case, wire, where, pos if case.long else None)
    data = bytes(wire.data)
    end = len(data)
    case.ending = _pick(rng, [(72, "keep"), (20, "close"), (5, "reset"), (3, "stall")])
    if case.ending != "keep":  # the answer ends early: closed, reset or left open and silent
        end = _pick(rng, [(3, len(data) - rng.randint(1, 5)), (2, wire.position(rng, ("head",)) or 0),
                          (2, wire.position(rng, ("framing",)) or 0), (3, rng.randrange(len(data) + 1))])
        if case.long and rng.random() < 0.8:
            end = _hot_spot(rng, wire)
        last = len(data) if case.ending == "stall" else len(data) - 1  # a close or a reset cuts a byte at least
        end = max(0, min(end, last))
        case.mutations.append("%s after byte %d of %d (%s)" % (case.ending, end, len(data), wire.kind(end)))
    case.wire = data[:end]
    if case.ending == "keep" and (case.changed or not case.persistent):
        case.ending = "close"  # a changed answer is never followed by another on its connection
    case.writes = []
    if rng.random() < 0.6 and end > 1:
        case.writes = _split(rng, end, 1, 6, [_hot_spot(rng, wire) for _ in range(3)] if case.long else ())


def _split(rng, end, fewest, most, spots=()):
    # the writes of an answer of `end` bytes: cut at random places and at the spots, some with a pause after
    cuts = set(rng.randrange(1, end) for _ in range(rng.randint(fewest, most)))
    cuts = sorted(cuts | {c for c in spots if 0 < c < end})
    return [(c, _pick(rng, [(2, 0), (3, rng.uniform(0.001, 0.015))])) for c in cuts]


def _swap_number(rng, case, wire, where, near=None):
    # A number in the head (decimal) or a chunk-size line (hex) becomes an odd one: off by one, zero, huge. In
    # the head, most often one that frames the body (Content-Length, Content-Range) rather than a date's.
    digits = rb"[0-9]+" if where == "head" else rb"[0-9a-fA-F]+"
    found = []
    for s, e, k in wire.spans:
        if k == where:
            text = bytes(wire.data[s:e])
            for m in re.finditer(digits, text):
                line = text[text.rfind(b"\n", 0, m.start()) + 1:m.start()].lower()
                if where == "head":
                    found += [(m.start() + s, m.end() + s)] * (8 if line.startswith(b"content-") else 1)
                elif m.start() == 0 or line == b"":  # a chunk size: at the start of its line
                    found.append((m.start() + s, m.end() + s))
    if not found:
        return
    s, e = rng.choice(found) if near is None else min(found, key=lambda f: abs(f[0] - near))
    old = bytes(wire.data[s:e])
    n = int(old, 10 if where == "head" else 16)
    new = rng.choice([0, 1, n - 1, n + 1, 2 * n + 7, 2 ** 31, 2 ** 32 + n, 2 ** 62, 2 ** 63, 2 ** 64 + 1, 10 ** 30])
    text = (b"%d" if where == "head" else b"%x") % abs(new)
    if new < 0 or rng.random() < 0.1:
        text = (b"-" if new < 0 else b"+") + text
    wire.replace(s, e - s, text)
    case.mutations.append("number %r at byte %d (%s) -> %r" % (old, s, where, text))


# ---------------------------------------------------------------- the strict reader

class Bad(Exception):
    pass


class Short(Bad):
    """The bytes end (or stall) before the message does."""


@dataclass
class Message:
    status: int = None
    version: int = 1  # the minor version
    fields: list = field(default_factory=list)  # [(lower-case name, value)]
    body: bytes = None  # the whole body, codings removed; None if the message fails
    delivered: bytes = b""  # payload bytes a streaming reader handed out before it failed (none if coded)
    coded: bool = False
    error: str = None
    end: int = None  # the offset after the message: bytes from here on are no part of it

    def values(self, name):
        # a list-valued field, all its lines: lower-case elements, empty ones left out; None when absent
        lines = [v for k, v in self.fields if k == name]
        if not lines:
            return None
        return [e.strip(b" \t").lower() for v in lines for e in v.split(b",") if e.strip(b" \t")]

    def get(self, name):
        for k, v in self.fields:
            if k == name:
                return v
        return None


def _line(data, p):
    # -> (line without its ending, offset after it); a line ends in CRLF or a bare LF
    i = data.find(b"\n", p)
    if i < 0:
        raise Short("a line cut short")
    line = data[p:i]
    return line[:-1] if line.endswith(b"\r") else line, i + 1


def _fields(data, p, what):
    # field lines up to the empty line -> ([(name, value)], offset after the empty line)
    fields = []
    while True:
        line, p = _line(data, p)
        if not line:
            return fields, p
        if line[:1] in (b" ", b"\t"):  # obs-fold: the line goes on the field above
            if not fields:
                raise Bad("obs-fold with no field above")
            name, value = fields.pop()
            value = (value + b" " + line.strip(b" \t")).strip(b" ")
        else:
            name, sep, value = line.partition(b":")
            name = name.rstrip(b" \t")  # blanks before the colon: a proxy removes them (RFC 9112 section 5.1)
            if not sep or not TOKEN.fullmatch(name):
                raise Bad("%s line without a token name: %r" % (what, line[:60]))
            name, value = name.lower(), value.strip(b" \t")
        fields.append((name, value.replace(b"\r", b" ").replace(b"\0", b" ")))


def decode(data, eof=True):
    """The message a strict HTTP/1.1 reader makes of an answer to a GET: `data` is every byte the server sent,
    `eof` whether it then closed (False: it stalled). Never raises: a failure is Message.error."""
    msg = Message()
    try:
        p = _start(msg, data)
        raw = _payload(msg, data, p, eof)
        msg.body = _decoded(msg, raw)
    except Bad as e:
        msg.error = "%s: %s" % ("cut short" if isinstance(e, Short) else "invalid", e)
        msg.body = None
    if msg.coded:
        msg.delivered = b""
    return msg


def _start(msg, data):
    p = 0
    while True:
        line, p = _line(data, p)
        # the reason phrase is ignored, but a bare CR (RFC 9112 section 2.2) or a NUL in it makes the line bad
        m = re.fullmatch(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [^\r\0]*)?", line, re.S)
        if not m:
            raise Bad("status line %r" % line[:60])
        msg.version, msg.status = int(m.group(1)), int(m.group(2))
        if not 100 <= msg.status <= 599:
            raise Bad("status %d" % msg.status)
        msg.fields, p = _fields(data, p, "header")
        if not (100 <= msg.status < 200 and msg.status != 101):
            return p


def _payload(msg, data, p, eof):
    # the body's bytes as framed, transfer coding removed
    if msg.status in (101, 204, 304):
        msg.end = p
        return b""
    te = msg.values(b"transfer-encoding")
    if te is not None:
        if te != [b"chunked"]:
            raise Bad("transfer coding %r" % te)
        if msg.version == 0:
            raise Bad("Transfer-Encoding in an HTTP/1.0 answer")
        return _chunks(msg, data, p)
    lengths = [v for k, v in msg.fields if k == b"content-length"]
    if lengths:
        n = {e.strip(b" \t") for v in lengths for e in v.split(b",")}
        if len(n) != 1 or not re.fullmatch(rb"[0-9]+", next(iter(n))):
            raise Bad("Content-Length %r" % lengths)
        n = int(next(iter(n)))
        msg.delivered = data[p:p + n]
        if len(msg.delivered) < n:
            raise Short("%d of %d bytes" % (len(msg.delivered), n))
        msg.end = p + n
        return msg.delivered
    msg.delivered = data[p:]
    if not eof:
        raise Short("the close that ends the body never came")
    msg.end = len(data)
    return msg.delivered


_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|\"(?:[^\"\\]|\\.)*\"))?)* *"
                        % ((TOKEN.pattern,) * 2))  # (spaces may end it: ESPAsyncWebServer pads sizes with them)


def _chunks(msg, data, p):
    out = bytearray()
    while True:
        line, p = _line(data, p)
        m = _SIZE_LINE.fullmatch(line)
        if not m:
            raise Bad("chunk-size line %r" % line[:60])
        n = int(m.group(1), 16)
        if not n:
            break
        out += data[p:p + n]
        msg.delivered = bytes(out)
        if p + n > len(data):
            raise Short("chunk data")
        p += n
        if data[p:p + 2] == b"\r\n":
            p += 2
        elif data[p:p + 1] == b"\n":
            p += 1
        elif len(data) - p < 2:
            raise Short("the CRLF after chunk data")
        else:
            raise Bad("no CRLF after chunk data")
    msg.end = _fields(data, p, "trailer")[1]
    return bytes(out)


def _decoded(msg, raw):
    codings = msg.values(b"content-encoding") or []
    for c in codings:
        if c not in _CODINGS:
            raise Bad("content coding %r" % c)
    msg.coded = any(c not in _UNCODED for c in codings)
    if not raw:
        return raw  # no body: nothing to decode
    for c in reversed(codings):
        if c not in _UNCODED:
            z = zlib.decompressobj(wbits=15 if c == b"deflate" else 31)
            try:
                raw = z.decompress(raw)
            except zlib.error as e:
                raise Bad("%s: %s" % (c.decode(), e))
            if not z.eof or z.unused_data:
                raise Bad("%s stream %s" % (c.decode(), "with bytes after its end" if z.eof else "cut short"))
    return raw


# ---------------------------------------------------------------- the oracle

def _dm_view(case, msg, body, complete=True):
    # What DownloadManager makes of an answer's body (all of it, or what came before a failure): the bytes it
    # must hand on, or None if the answer gives it none (a status that is no success, a 206 that is not the
    # range asked for or is shorter than it says).
    if body is None or msg.status is None or not 200 <= msg.status < 300:
        return None
    lo, hi = case.byte_range or (0, None)
    if msg.status != 206:
        return body[lo:None if hi is None else hi + 1]  # the whole resource: the range is taken from it
    # (the unit is a token, compared without regard to case: RFC 9110 section 14.1)
    m = re.fullmatch(rb"(?i:bytes) ([0-9]+)-([0-9]+)/([0-9]+|\*)", msg.get(b"content-range") or b"")
    if case.byte_range is None or not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == b"*" else int(m.group(3))
    last = hi if total is None else total - 1 if hi is None else min(hi, total - 1)
    if a != lo or b != last:
        return None
    if len(body) == b - a + 1 or not complete and len(body) < b - a + 1:
        return body
    return None


def judge(case, job, result):
    """What was wrong with a case's result: [] when it is what a correct client may give.
    job: what the client was asked (see job()); result: what the MicroPython side reported."""
    problems = ["%s: %s" % (n["what"], n["detail"]) for n in result.get("notes", [])]
    outcome = result["outcome"]
    if outcome in ("hang", "crash", "foreign"):
        trace = result.get("trace")
        problems.append("%s: %s%s" % (outcome, result.get("error"), "\n" + trace if trace else ""))
    if outcome != "hang" and result.get("ms", 0) > case.bound_ms:
        problems.append("took %d ms (bound %d ms)" % (result["ms"], case.bound_ms))
    if result.get("fds"):
        problems.append("%+d file descriptors after the case and its session were closed" % result["fds"])
    if outcome == "ok":
        why = _wrong_bytes(case, _read(job["outfile"] or job["got"]))
        if why:
            problems.append(why)
        if job["outfile"] and os.path.exists(job["outfile"] + ".part"):
            problems.append("OUTFILE.part is left after a success")
    elif outcome == "fail":
        if _must_succeed(case):
            problems.append("failed on an answer a correct client reads: %s" % result.get("error"))
        if job["outfile"] and _read(job["outfile"]) != (OLD if case.old_file else None):
            problems.append("the failure changed OUTFILE: %r" % _shown(_read(job["outfile"]) or b"(removed)", 80))
    if result.get("next") not in (None, "ok") and not _late_extra_bytes(case):
        problems.append("the next request on the same session: %s" % result["next"])
    return problems


def _late_extra_bytes(case):
    # Bytes after the answer's end that the server wrote apart from it, after the client may have sent its next
    # request on the connection: no client can tell them from that request's answer. (Bytes that come with the
    # answer's end are another matter: RFC 9112 section 6.3, no client may take them for an answer.)
    end = decode(case.wire, case.ending != "stall").end
    return end is not None and any(end <= cut < len(case.wire) for cut, _ in case.writes)


def _read(path):
    return Path(path).read_bytes() if os.path.exists(path) else None


def _wrong_bytes(case, got):
    if got == case.wanted:
        return None
    msg = decode(case.wire, case.ending != "stall")
    strict = msg.error or "%d bytes" % len(msg.body)
    if got is None:
        return "reported success but returned nothing"
    if case.api == "aiohttp":
        if got in (msg.body, case.resource):
            return None
        return "returned %d bytes: not the resource (%d), not what a strict reader decodes (%s)" % (
            len(got), len(case.wanted), strict)
    if case.sha:
        return "returned %d bytes that are not the resource's (%d), with sha256= given" % (len(got), len(case.wanted))
    if got == _dm_view(case, msg, msg.body):
        return None
    # a resume: what the first answer delivered before it failed, then the resource from there on
    first = _dm_view(case, msg, msg.delivered, complete=False)
    want = case.wanted
    if first is not None and len(got) == len(want):
        k = max((i for i in range(len(want)) if got[i] != want[i]), default=-1) + 1
        if k <= len(first) and got[:k] == first[:k]:
            return None
    return "returned %d bytes: not the resource (%d), not what a strict reader decodes (%s), not a resume" % (
        len(got), len(want), strict)


def _must_succeed(case):
    # Only the timing changed; or the answer was cut (closed, reset, stalled) where a correct client still gets
    # the bytes: a close-delimited body ends at the close; DownloadManager resumes if the retry is answered,
    # unless a coded body's chunks went out already in stream mode, or a cut close-delimited body is taken for
    # whole and fails its sha256=.
    if case.changed or case.deadline is not None:  # (a short deadline= may expire on any answer)
        return False
    if case.long and case.mode in ("memory", "read"):  # a whole long body in one piece of a fragmented heap
        return False
    if len(case.wire) == len(case.well_formed) and case.ending in ("keep", "close"):
        return True
    if case.api == "aiohttp" or case.framing == "close" and case.ending == "close":
        body = decode(case.wire).body
        whole = decode(case.well_formed)  # (its final status: 1xx heads may come first)
        if case.api != "aiohttp" and body is not None and whole.status == 206 and len(body) < len(whole.body):
            return case.retries == "clean"  # a 206's Content-Range tells that its close-delimited body was cut
        if case.api != "aiohttp" and body is not None and whole.status == 200 and case.byte_range and (
                len(body) <= case.byte_range[0]):
            return False  # a whole resource, by its close, that ends before the range asked for: a 416 (decisions.md)
        return case.ending == "close" and body is not None and not case.sha
    return case.retries == "clean" and not (case.mode == "stream" and case.coding)


# ---------------------------------------------------------------- the server

def clean_answer(case, headers):
    """A correct answer to a retry of the case: Range (bytes=a-b) honoured unless If-Range names another
    version, Content-Length framing, no coding, the connection kept."""
    full, n = case.resource, len(case.resource)
    status, body, fields = 200, full, [("ETag", case.etag)]
    m = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", headers.get("range", "").strip())
    if m and headers.get("if-range", case.etag) in (case.etag, "Wed, 21 Oct 2015 07:28:00 GMT"):
        a = int(m.group(1))
        b = min(int(m.group(2)) if m.group(2) else n - 1, n - 1)
        if a > b:
            status, body = 416, b""
            fields.append(("Content-Range", "bytes */%d" % n))
        else:
            status, body = 206, full[a:b + 1]
            fields.append(("Content-Range", "bytes %d-%d/%d" % (a, b, n)))
    return _plain(status, body, fields)


def _plain(status, body, fields=()):
    head = "HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Not OK"))
    head += "".join("%s: %s\r\n" % kv for kv in list(fields) + [("Content-Length", len(body))])
    return head.encode() + b"\r\n" + body


class FuzzServer(socketserver.ThreadingTCPServer):
    """Loopback HTTP/1.1 server for the cases: /case/ID answers the first request with the case's mutated
    answer, written as the case says, and later ones with clean_answer(); /good/ID serves the case's `good`
    resource with Content-Length, keeping the connection."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, certs=None):
        super().__init__((HOST, 0), _Handler)
        self.port = self.server_address[1]
        self._tls = certs.server_ctx() if certs else None  # TLS: the handshake happens in the handler's thread
        self._cases = {}  # id -> [case, requests seen]
        self._next = 0
        self._lock = threading.Lock()

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True, name="FuzzServer").start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    def get_request(self):
        sock, address = super().get_request()
        if self._tls:
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def add(self, case):
        """-> (URL of the case, URL of its next request). Each call is a fresh id: a case may be run again."""
        with self._lock:
            self._next += 1
            self._cases[self._next] = [case, 0]
        base = "%s://%s:%d" % ("https" if self._tls else "http", HOST, self.port)
        return "%s/case/%d" % (base, self._next), "%s/good/%d" % (base, self._next)

    def answer(self, path, headers):
        # -> (the case, whether this is its first request), or None for an unknown path
        m = re.fullmatch(r"/(case|good)/([0-9]+)", path)
        with self._lock:
            entry = self._cases.get(int(m.group(2))) if m else None
            if entry is None:
                return None
            if m.group(1) == "good":
                return entry[0], None
            entry[1] += 1
            return entry[0], entry[1] == 1


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def handle(self):
        try:
            while True:
                request = self.rfile.readline().decode("latin-1").split(" ")
                headers = {}
                for line in iter(self.rfile.readline, b"\r\n"):
                    if not line:
                        return
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                found = self.server.answer(request[1] if len(request) > 1 else "", headers)
                if found is None:
                    self.request.sendall(_plain(404, b""))
                elif found[1] is None:
                    self.request.sendall(_plain(200, found[0].good))
                elif not found[1] and found[0].retries == "clean":
                    self.request.sendall(clean_answer(found[0], headers))
                elif not found[1] and found[0].retries == "gone":
                    self.request.sendall(_plain(410, b""))
                elif not self._mutated(self.request, found[0]):
                    return
        except OSError:
            return

    def _mutated(self, sock, case):
        # Writes the case's answer as it says -> whether the connection serves on
        pos = 0
        for end, pause in case.writes:
            sock.sendall(case.wire[pos:end])
            pos = end
            time.sleep(pause)
        sock.sendall(case.wire[pos:])
        if case.ending == "keep":
            return True
        if case.ending == "reset":
            _sent(sock)  # the oracle holds that what was written arrives: a reset throws away what is still queued
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # now: a shutdown() first would send a FIN before the RST
            return False
        if case.ending == "close":
            # over TLS a close_notify first: without one a close-delimited body is cut short
            sock = send_close_notify(sock)
            sock.shutdown(socket.SHUT_WR)  # the client sees the end at once; what it still sends is read below
            sock.settimeout(2)
            while sock.recv(65536):  # until the client closes
                pass
        else:  # a stall: silent until the client gives up, or sends a request here, which ends the connection
            sock.settimeout(3 * DEADLINE)
            sock.recv(65536)
        return False


def _sent(sock, limit=2.0):
    # Waits (up to limit seconds) until the peer has acknowledged every byte written (Linux's SIOCOUTQ: 0)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0] == 0:
            return
        time.sleep(0.001)


# ---------------------------------------------------------------- the client on MicroPython

class Client:
    """One long-lived MicroPython process running tests/mpy/fuzzclient.py: run(job) sends a case as a JSON
    line and waits for its result line. A process that hangs is killed and the next run starts a fresh one."""
    script = "fuzzclient.py"  # in tests/mpy

    def __init__(self, workdir, lib=LIB):
        self.workdir = Path(workdir)
        self.lib = lib
        self.proc = None
        self.errors = []  # its last stderr lines (the library logs each failure there)

    def _start(self):
        env = dict(os.environ, MICROPYPATH=micropypath(self.lib))
        self.proc = subprocess.Popen([micropython(), "-X", "heapsize=" + HEAP, str(TESTLIB / self.script)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     cwd=self.workdir, text=True, errors="backslashreplace", bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._error), daemon=True).start()

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line)
        put(None)

    def _error(self, line):
        if line is not None:
            self.errors = self.errors[-30:] + [line]

    def run(self, job):
        if self.proc is None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            while True:
                line = self.lines.get(timeout=HANG_S)
                if line is None:
                    break
                if line.startswith("@@RESULT "):
                    return json.loads(line[9:])
        except queue.Empty:
            self.close()
            return {"outcome": "hang", "error": "no result after %d s; its stderr ends:\n%s"
                    % (HANG_S, "".join(self.errors[-5:]))}
        except OSError:
            pass
        self.close()
        return {"outcome": "crash", "error": "MicroPython exited; its stderr ends:\n%s" % "".join(self.errors)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def job(case, url, good_url, workdir):
    """The JSON line for tests/mpy/fuzzclient.py."""
    return {"i": case.index, "api": case.api, "mode": case.mode, "url": url, "good_url": good_url,
            "good_sha": hashlib.sha256(case.good).hexdigest(), "range": case.range_header,
            "sha256": hashlib.sha256(case.wanted).hexdigest() if case.sha else None,
            "raise": case.raise_errors, "chunk": case.chunk, "progress": case.progress,
            "outfile": str(Path(workdir) / "outfile") if case.mode == "file" else None,
            "got": str(Path(workdir) / "got"), "read_timeout": READ_TIMEOUT, "deadline": DEADLINE,
            "case_deadline": case.deadline or DEADLINE}


def describe(case):
    """The case in words and bytes, for a failure report."""
    msg = decode(case.wire, case.ending != "stall")
    out = ["%s: %s %s%s%s%s, resource %d bytes%s" % (
        case.name, case.api, case.mode, " sha256=" if case.sha else "", " raise_errors" if case.raise_errors else "",
        " chunk=%s" % case.chunk if case.chunk else "", len(case.resource),
        ", Range: %s" % case.range_header if case.byte_range else ""),
        "well-formed answer: %d %s%s, %d bytes" % (case.status, case.framing, " " + case.coding if case.coding
                                                    else "", len(case.well_formed)),
        "mutations: %s" % ("; ".join(case.mutations) or "none (timing only)"),
        "later requests: %s" % case.retries,
        "over %s" % ("TLS, a record per write" if case.tls else "plain TCP"),
        "deadline: %s s" % (case.deadline or DEADLINE),
        "writes: %s" % (", ".join("%d (+%.0f ms)" % (e, p * 1000) for e, p in case.writes) or "one"),
        "strict reader: %s" % (msg.error or "status %d, %d bytes of body" % (msg.status, len(msg.body))),
        "answer as sent (%d bytes, then %s): %r" % (len(case.wire), case.ending, _shown(case.wire))]
    return "\n  ".join(out)


def _shown(data, n=600):
    return data if len(data) <= n else data[:n] + b"..."


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], ["--wire"]):
        sys.exit("usage: python tools/fuzz.py SEED CASE [--wire]   (--wire: the answer's exact bytes on stdout)")
    c = make_case(sys.argv[1], int(sys.argv[2]))
    if sys.argv[3:]:
        sys.stdout.buffer.write(c.wire)
    else:
        print(describe(c))
