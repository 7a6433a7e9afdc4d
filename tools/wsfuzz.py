"""A seeded mutation fuzzer for the websocket client (CPython side; tests/test_wsfuzz.py runs it).

Case i of seed s is fully determined by (s, i): how the client connects and reads (protocols offered, autoping,
autoclose, max_msg_size; `async for`, `receive()`, `receive()` echoing each message while a second task sends, or
`receive()` while a second task sends and a third calls close()), the opening handshake's answer (proper, or
mutated: status line, Sec-WebSocket-Accept, Upgrade and Connection, a subprotocol or extension not offered, header
names' case, bit flips, a head cut short, frames in the same write), a well-formed sequence of server frames (text
and binary messages, fragmented with continuation frames, pings and pongs between and inside fragments, payloads of
0, 125, 126, 127, 65535, 65536 and 65537 bytes, UTF-8 split anywhere across fragments, a Close with code and reason
or none) and the mutations made to it (bit flips, RSV bits, masked frames, bad opcodes, control frames over 125
bytes or fragmented, lengths with the top bit set, not minimally encoded or off, stray and misplaced continuations,
bad UTF-8, bad Close payloads, bytes inserted, deleted or appended after the Close, a truncation), written as the
case says (split with pauses, a stretch or all of it byte by byte) and ended by the server's Close, a FIN, a reset
or a stall.

The oracle (expect(), below) is RFC 6455's client side written out on its own, from the bytes the server actually
sent: whether the handshake must succeed, fail or may do either, and the messages a correct client delivers in order
before its end (the server's Close, a failure with a close code, a TCP end between or inside frames, a stall). Where
RFC 6455 leaves a client a choice (failing fast on a UTF-8 prefix no text can continue, refusing a length it can't
hold, a non-minimal length, the close codes 1012-1014), expect() lists the other ends a correct client may reach.
judge() compares it with what tests/mpy/wsfuzzclient.py reports: the exact messages, the end, close_code, the
Close sent back (with the server's code echoed, or the failure's code), the pongs, no fd left, a next websocket on
the same session.

    python tools/wsfuzz.py SEED CASE    # the case in words and bytes, and the oracle's verdict
"""
import base64
import codecs
import hashlib
import random
import re
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.fuzz import Client as _Client, FuzzServer, _pick  # noqa: E402 (_pick: a weighted choice)

HOST = "127.0.0.1"
READ_TIMEOUT = 1.0  # seconds: the client's receive timeout, so a stall is found fast
HEARTBEAT = 0.4  # seconds: ws_connect(heartbeat=) in some cases; the fail comes 0.6 s into a quiet spell
ANSWER_TIMEOUT = 3.0  # seconds: the session's sock_read, the wait for the handshake's answer (a loaded machine)
CLOSE_TIMEOUT = 0.5  # seconds: the client's ws_close
BOUND_MS = 6000  # a case (handshake to close()) that takes longer is a defect
HEAP_LIMIT = 256 * 1024  # a message announced longer than this may be refused with 1009 (the client's heap is 2 MB)
DEFAULT_MAX = 4 * 1024 * 1024  # aiohttp's max_msg_size
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ACCEPT = b"\x00ACCEPT\x00"  # where the head template takes the Sec-WebSocket-Accept value
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
VALID_CODES = set(range(1000, 1012)) - {1004, 1005, 1006} | set(range(3000, 5000))
LATER_CODES = {1012, 1013, 1014}  # registered with IANA after RFC 6455: a client may take them or refuse them
TEXT_POOL = ["é", "ß", "\u0080", "\u07ff", "\u0800", "한", "\ud7ff", "\ue000", "\uffff", "\U00010000", "😀",
             "\U0010ffff"]
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xf8\x88"]

OP_NAMES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())


# ---------------------------------------------------------------- the case

@dataclass
class Frame:
    op: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    mask: bytes = None
    width: int = None  # bytes of extended length: 0, 2 or 8 (None: the minimal)
    top: bool = False  # the 8-byte length with its most significant bit set
    announce: int = None  # the length announced, when not the payload's

    def encode(self):
        n = len(self.payload) if self.announce is None else self.announce
        width = max(self.width or 0, 0 if n < 126 else 2 if n < 65536 else 8)
        b0 = (0x80 if self.fin else 0) | self.rsv << 4 | self.op
        m = 0x80 if self.mask else 0
        if width == 0:
            head = bytes((b0, m | n))
        elif width == 2:
            head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((b0, m | 127)) + (n | (1 << 63 if self.top else 0)).to_bytes(8, "big")
        payload = self.payload
        if self.mask:
            payload = bytes(b ^ self.mask[i % 4] for i, b in enumerate(payload))
            head += self.mask
        return head + payload


@dataclass
class Case:
    seed: str
    index: int
    api: str = "receive"  # "receive" (ws.receive(timeout=)), "iter" (async for, receive_timeout=), "echo"
    # (receive(), each message sent back, while another task sends text messages "\0chat N"), or "closer"
    # (receive(), the same second task sending, and a third's close() once close_after messages came)
    close_after: int = 0
    heartbeat: float = None  # ws_connect(heartbeat=): the server never answers its pings, so a quiet spell ends it
    protocols: list = field(default_factory=list)  # offered
    autoping: bool = True
    autoclose: bool = True  # False: the server's Close is answered by the app's close() (the fuzz client's: 1000)
    max_msg_size: int = None  # None: aiohttp's default (4 MB)
    head: bytes = b""  # the handshake answer, ACCEPT where the accept value goes
    accept: str = "right"  # right, or flip:POS:BIT (that bit of that character flipped)
    frames: list = field(default_factory=list)  # the well-formed sequence, as Frames (for describe())
    wire: bytes = b""  # what follows the head (mutated)
    writes: list = field(default_factory=list)  # [(end offset in head + wire, pause seconds)]
    ending: str = "close"  # close (the server's Close is in the wire), fin, reset, stall, mute
    mutations: list = field(default_factory=list)

    @property
    def name(self):
        return "seed %s case %d" % (self.seed, self.index)

    def head_for(self, key):
        # the head as sent to the client whose Sec-WebSocket-Key is key
        value = accept_key(key)
        if self.accept.startswith("flip:"):
            _, pos, bit = self.accept.split(":")
            pos = int(pos) % len(value)
            value = value[:pos] + bytes([value[pos] ^ 1 << int(bit)]) + value[pos + 1:]
        return self.head.replace(ACCEPT, value)


def _text(rng, size):
    # size bytes of UTF-8: ASCII with characters of every length among them
    out, n = [], 0
    while n < size:
        c = rng.choice(TEXT_POOL) if rng.random() < 0.4 else chr(rng.randint(0x20, 0x7E))
        if len(c.encode()) > size - n:
            c = "x"
        out.append(c)
        n += len(c.encode())
    return "".join(out).encode()


def _size(rng, big):
    return _pick(rng, [(40, rng.randint(0, 40)), (8, 125), (6, 126), (4, 127), (25, rng.randint(41, 3000)),
                       (8 if big else 0, rng.choice([65535, 65536, 65537]))])


def _control_payload(rng):
    return bytes(rng.getrandbits(8) for _ in range(_pick(rng, [(6, rng.randint(0, 20)), (2, 125), (1, 0)])))


def _split(rng, payload, parts):
    cuts = sorted(rng.randint(0, len(payload)) for _ in range(parts - 1))
    return [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]


def _sequence(rng, big):
    # a well-formed sequence of server frames
    frames = []
    for _ in range(_pick(rng, [(1, 0), (6, rng.randint(1, 3)), (3, rng.randint(4, 7))])):
        kind = _pick(rng, [(40, "text"), (30, "binary"), (15, "ping"), (10, "pong")])
        if kind in ("ping", "pong"):
            frames.append(Frame(9 if kind == "ping" else 10, _control_payload(rng)))
            continue
        size = _size(rng, big)
        big = big and size < 65535  # one long message a case at most
        payload = _text(rng, size) if kind == "text" else bytes(rng.getrandbits(8) for _ in range(size))
        parts = _split(rng, payload, _pick(rng, [(6, 1), (3, rng.randint(2, 4)), (1, rng.randint(5, 12))]))
        for j, part in enumerate(parts):
            if j and rng.random() < 0.25:  # a control frame between fragments
                frames.append(Frame(rng.choice((9, 10)), _control_payload(rng)))
            frames.append(Frame((1 if kind == "text" else 2) if j == 0 else 0, part, fin=j == len(parts) - 1))
    return frames


def _close(rng):
    if rng.random() < 0.15:
        return Frame(8)
    code = rng.choice([1000, 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999])
    reason = _text(rng, _pick(rng, [(4, 0), (5, rng.randint(1, 30)), (1, 123)]))
    return Frame(8, struct.pack(">H", code) + reason)


def make_case(seed, index):
    rng = random.Random("%s/%d" % (seed, index))
    case = Case(seed, index)
    case.api = _pick(rng, [(4, "receive"), (3, "iter"), (3, "echo"), (2, "closer")])
    case.close_after = rng.randint(0, 3)
    case.heartbeat = HEARTBEAT if rng.random() < 0.12 else None
    case.protocols = _pick(rng, [(6, []), (2, ["chat"]), (2, ["chat", "superchat"])])
    case.autoping = rng.random() < 0.8
    case.autoclose = rng.random() < 0.85
    case.max_msg_size = _pick(rng, [(8, None), (1, 0), (1, rng.choice([125, 1000, 65536]))])
    _handshake(rng, case)
    frames = _sequence(rng, rng.random() < 0.08)
    case.ending = _pick(rng, [(6, "close"), (2, "fin"), (1, "reset"), (1, "stall"), (0.5, "mute")])
    if case.ending == "close":
        frames.append(_close(rng))
    case.frames = frames
    mutated = [Frame(**vars(f)) for f in frames]
    for _ in range(_pick(rng, [(3, 0), (4, 1), (2, 2), (1, rng.randint(3, 5))])):
        _mutate_frames(rng, case, mutated)
    wire = b"".join(f.encode() for f in mutated)
    for _ in range(_pick(rng, [(7, 0), (2, 1), (1, 2)])):
        wire = _mutate_bytes(rng, case, wire)
    case.wire = wire
    _timing(rng, case)
    return case


# ---------------------------------------------------------------- the handshake

def _handshake(rng, case):
    status = b"HTTP/1.1 101 Switching Protocols"
    fields = [[b"Upgrade", b"websocket"], [b"Connection", b"Upgrade"], [b"Sec-WebSocket-Accept", ACCEPT]]
    if case.protocols and rng.random() < 0.7:
        fields.append([b"Sec-WebSocket-Protocol", rng.choice(case.protocols).encode()])
    if rng.random() < 0.3:
        fields.insert(rng.randint(0, len(fields)), [b"Server", b"wsfuzz/1.0"])
    if rng.random() < 0.7:
        rng.shuffle(fields)
    for _ in range(_pick(rng, [(7, 0), (3, 1)])):
        what = _pick(rng, [(3, "status"), (3, "accept"), (2, "upgrade"), (2, "connection"), (1, "extension"),
                           (1, "protocol"), (2, "case"), (2, "flip"), (1, "cut")])
        case.mutations.append("handshake: " + what)
        if what == "status":
            status = rng.choice([b"HTTP/1.1 200 OK", b"HTTP/1.1 302 Found", b"HTTP/1.0 101 Switching Protocols",
                                 b"HTTP/1.1 101 ", b"HTTP/1.1 101 Whatever", b"HTTP/1.1 1010 X", b"HTTP/1.1 101",
                                 b"HTTP/1.1 100 Continue", b"HTTP/1.1 404 Not Found", b"HTTP/2 101 Go"])
            case.mutations[-1] += " %r" % status
        elif what == "accept":
            how = rng.choice(["missing", "wrong", "flip", "spaces", "twice"])
            case.mutations[-1] += " " + how
            accept = next(f for f in fields if f[1] == ACCEPT)
            if how == "missing":
                fields.remove(accept)
            elif how == "wrong":
                accept[1] = b"dGhlIHNhbXBsZSBub25jZQ=="
            elif how == "flip":
                case.accept = "flip:%d:%d" % (rng.randint(0, 27), rng.randint(0, 3))
            elif how == "spaces":
                accept[1] = b"  " + ACCEPT + b" \t"
            else:
                fields.append(list(accept))
        elif what in ("upgrade", "connection"):
            name = b"Upgrade" if what == "upgrade" else b"Connection"
            value = rng.choice([None, b"WebSocket", b"websocket2", b"h2c"] if what == "upgrade" else
                               [None, b"upgrade", b"keep-alive, Upgrade", b"close", b"Upgrade, close"])
            case.mutations[-1] += " %r" % value
            for f in fields:
                if f[0].lower() == name.lower():
                    if value is None:
                        fields.remove(f)
                    else:
                        f[1] = value
                    break
        elif what == "extension":
            fields.append([b"Sec-WebSocket-Extensions", rng.choice([b"permessage-deflate", b"x-foo"])])
        elif what == "protocol":
            fields = [f for f in fields if f[0] != b"Sec-WebSocket-Protocol"]
            fields.append([b"Sec-WebSocket-Protocol", rng.choice([b"chat", b"superchat", b"other"])])
        elif what == "case":
            f = rng.choice(fields)
            f[0] = rng.choice([f[0].lower(), f[0].upper()])
    head = b"\r\n".join([status] + [b"%s: %s" % (k, v) for k, v in fields]) + b"\r\n\r\n"
    if "handshake: flip" in case.mutations:
        # a bit flipped anywhere but in the line ends and ACCEPT (the accept has a mutation of its own); never to
        # CR or LF: the head keeps its lines
        places = [i for i in range(len(head) - 4) if head[i] not in b"\r\n\x00" and not _in_accept(head, i)]
        for _ in range(20):
            i, bit = rng.choice(places), rng.randint(0, 7)
            if head[i] ^ 1 << bit not in b"\r\n":
                head = head[:i] + bytes([head[i] ^ 1 << bit]) + head[i + 1:]
                case.mutations[-1] += " byte %d bit %d" % (i, bit)
                break
    if "handshake: cut" in case.mutations:
        head = head[:rng.randint(0, len(head) - 1)]
        case.mutations[-1] += " at %d" % len(head)
    case.head = head


def _in_accept(head, i):
    at = head.find(ACCEPT)
    return at >= 0 and at <= i < at + len(ACCEPT)


# ---------------------------------------------------------------- the mutations

def _mutate_frames(rng, case, frames):
    controls = [f for f in frames if f.op >= 8]
    data = [f for f in frames if f.op < 8]
    what = _pick(rng, [(2, "rsv"), (2, "mask"), (2, "opcode"), (2, "long control"), (2, "fragmented control"),
                       (1, "top bit"), (3, "non-minimal"), (2, "stray continuation"), (2, "new message inside"),
                       (3, "bad utf-8"), (3, "close payload"), (2, "after close"), (2, "length off"),
                       (1, "ping inserted")])
    note = what
    if not frames and what not in ("stray continuation", "ping inserted", "long control"):
        what = "ping inserted"
        note = what
    if what == "rsv":
        f = rng.choice(frames)
        f.rsv = rng.randint(1, 7)
        note += " %d on a %s" % (f.rsv, OP_NAMES.get(f.op))
    elif what == "mask":
        f = rng.choice(frames)
        f.mask = bytes(rng.getrandbits(8) for _ in range(4))
        note += " on a %s" % OP_NAMES.get(f.op)
    elif what == "opcode":
        f = rng.choice(frames)
        f.op = rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
        note += " %d" % f.op
    elif what == "long control":
        f = rng.choice(controls) if controls else None
        if f is None or f.op == 8:
            f = Frame(9)
            frames.insert(rng.randint(0, len(frames)), f)
        f.payload = bytes(rng.randint(126, 200))
        note += " of %d bytes" % len(f.payload)
    elif what == "fragmented control":
        f = rng.choice(controls or frames)
        f.fin = False
        note += " (%s)" % OP_NAMES.get(f.op)
    elif what == "top bit":
        f = rng.choice(frames)
        f.width, f.top = 8, True
        note += " on a %s" % OP_NAMES.get(f.op)
    elif what == "non-minimal":
        f = rng.choice(frames)
        n = len(f.payload)
        f.width = rng.choice([w for w in (2, 8) if (0 if n < 126 else 2 if n < 65536 else 8) < w] or [8])
        note += " %d-byte length of %d" % (f.width, n)
    elif what == "stray continuation":
        at = rng.choice([i for i in range(len(frames) + 1) if not _inside_message(frames, i)])
        frames.insert(at, Frame(0, _text(rng, rng.randint(0, 10)), fin=rng.random() < 0.7))
    elif what == "new message inside":
        conts = [f for f in data if f.op == 0]
        if conts:
            rng.choice(conts).op = rng.choice((1, 2))
        else:
            note += " (no fragmented message)"
    elif what == "bad utf-8":
        texts = _text_frames(frames)
        if texts:
            f = rng.choice(texts)
            i = rng.randint(0, len(f.payload))
            bad = rng.choice(BAD_UTF8)
            f.payload = f.payload[:i] + bad + f.payload[i:]
            note += " %r at %d" % (bad, i)
    elif what == "close payload":
        close = next((f for f in frames if f.op == 8), None)
        if close is None:
            close = Frame(8)
            frames.append(close)
        close.payload = rng.choice([b"\x03", struct.pack(">H", rng.choice([0, 999, 1004, 1005, 1006, 1012, 1013,
                                                                            1014, 1015, 1016, 2000, 2999, 5000,
                                                                            65535])),
                                    b"\x03\xe8" + rng.choice(BAD_UTF8), b"\x03\xe8" + bytes(123)])
        note += " %r" % close.payload[:8]
    elif what == "after close":
        frames.append(Frame(rng.choice((1, 2, 9, 8)), b"after the close"))
    elif what == "length off":
        f = rng.choice(frames)
        f.announce = max(0, len(f.payload) + rng.choice([-3, -1, 1, 2, 1000, 1 << 20, 1 << 40]))
        note += " %d for %d (%s)" % (f.announce, len(f.payload), OP_NAMES.get(f.op))
    elif what == "ping inserted":
        at = rng.randint(0, len(frames))
        frames.insert(at, Frame(9, _control_payload(rng)))
    case.mutations.append("frames: " + note)


def _inside_message(frames, i):
    # whether a frame inserted at i lands between fragments of a message
    open_ = False
    for f in frames[:i]:
        if f.op in (0, 1, 2):
            open_ = not f.fin
    return open_


def _text_frames(frames):
    out, text = [], False
    for f in frames:
        if f.op in (1, 2):
            text = f.op == 1
        if f.op in (0, 1) and text:
            out.append(f)
    return out


def _mutate_bytes(rng, case, wire):
    what = _pick(rng, [(4, "flip"), (1, "insert"), (1, "delete"), (3, "truncate"), (1, "garbage")])
    if not wire and what != "garbage":
        what = "garbage"
    if what == "flip":
        i, bit = rng.randrange(len(wire)), rng.randint(0, 7)
        wire = wire[:i] + bytes([wire[i] ^ 1 << bit]) + wire[i + 1:]
        case.mutations.append("bytes: bit %d of byte %d flipped" % (bit, i))
    elif what == "insert":
        i, new = rng.randint(0, len(wire)), bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4)))
        wire = wire[:i] + new + wire[i:]
        case.mutations.append("bytes: %r inserted at %d" % (new, i))
    elif what == "delete":
        i = rng.randrange(len(wire))
        k = rng.randint(1, 4)
        wire = wire[:i] + wire[i + k:]
        case.mutations.append("bytes: %d deleted at %d" % (k, i))
    elif what == "truncate":
        i = rng.randrange(len(wire))
        wire = wire[:i]
        case.ending = rng.choice(("fin", "reset", "mute", "fin"))  # (not stall: its Close would land in a cut frame)
        case.mutations.append("bytes: cut at %d, then %s" % (i, case.ending))
    else:
        new = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        wire += new
        case.mutations.append("bytes: %r appended" % new)
    return wire


def _timing(rng, case):
    # how head + wire is written: the head alone or with the first bytes of the wire, pieces with pauses, maybe a
    # stretch one byte at a time
    total = len(case.head) + len(case.wire)
    cuts = {}
    if rng.random() < 0.5:
        cuts[len(case.head)] = rng.choice((0, 0.002))
    for _ in range(_pick(rng, [(4, 0), (4, rng.randint(1, 4)), (2, rng.randint(5, 10))])):
        cuts[rng.randint(1, total)] = rng.choice((0, 0, 0.001, 0.005))
    if rng.random() < 0.05 and total < 600:  # all of it, byte by byte
        cuts.update((i, 0) for i in range(1, total))
    elif rng.random() < 0.15:
        start = rng.randint(0, total)
        for i in range(start, min(total, start + rng.randint(5, 40))):
            cuts[i] = rng.choice((0, 0.0005))
    case.writes = sorted((end, pause) for end, pause in cuts.items() if 0 < end < total)


# ---------------------------------------------------------------- the oracle

@dataclass
class End:
    kind: str  # close, fail, eof (TCP end between frames), cut (inside a frame), eof|cut (between fragments),
    # stall, reset
    code: int = None  # close: the server's code (1005: none)
    reason: str = ""  # close
    codes: frozenset = frozenset()  # fail: the close codes a correct client may fail with
    why: str = ""

    def __str__(self):
        if self.kind == "close":
            return "the server's Close (%d, %r)" % (self.code, self.reason)
        if self.kind == "fail":
            return "a failure with %s (%s)" % ("/".join(map(str, sorted(self.codes))), self.why)
        return self.kind + (" (%s)" % self.why if self.why else "")


@dataclass
class Course:
    # messages a correct client delivers, then its end; pings: the pings it must have answered by then
    messages: list
    end: End
    pings: list


@dataclass
class Verdict:
    handshake: str  # ok, fail, either
    why: str = ""
    complete: bool = True  # the answer's head ends (else the client can only time out or see the connection end)
    main: Course = None  # when the handshake succeeds
    others: list = field(default_factory=list)  # other Path_s a correct client may take


def handshake_verdict(head, key, offered):
    """-> ("ok" | "fail" | "either", why, the head's length): RFC 6455 section 4.1 and RFC 9112 on the answer."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return "fail", "the head never ends", None
    lines = head[:end].split(b"\r\n")
    fails, odd = [], []
    m = re.fullmatch(rb"([A-Za-z]+)/(\d)\.(\d) (\d\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?", lines[0])
    if not m:
        if lines[0].startswith(b"HTTP/1.1 101 "):
            odd.append("odd status line")
        else:
            fails.append("bad status line %r" % lines[0])
    else:
        if m.group(1) != b"HTTP" or m.group(2) != b"1":
            fails.append("not HTTP/1.x")
        elif m.group(3) != b"1":
            odd.append("HTTP/1.%s" % m.group(3).decode())
        # a 1xx but 101 is an interim answer (RFC 9110 section 15.2): the real one follows
        if m.group(4)[:1] == b"1" and m.group(4) != b"101" and not fails:
            verdict, why, size = handshake_verdict(head[end + 4:], key, offered)
            return verdict, "after a %s: %s" % (m.group(4).decode(), why), size and end + 4 + size
        if m.group(4) != b"101":
            fails.append("status %s" % m.group(4).decode())
        if m.group(5) is None:
            odd.append("no reason phrase")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.fullmatch(name):
            odd.append("bad field line %r" % line)
            continue
        value = value.strip(b" \t")
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
            odd.append("control character in %r" % line)
        fields.setdefault(name.lower(), []).append(value)
    upgrade = fields.get(b"upgrade", [])
    if not upgrade or any(v.lower() != b"websocket" for v in upgrade):
        fails.append("Upgrade %r" % upgrade)
    elif len(upgrade) > 1:
        odd.append("Upgrade twice")
    tokens = [t.strip(b" \t").lower() for v in fields.get(b"connection", []) for t in v.split(b",")]
    if b"upgrade" not in tokens:
        fails.append("Connection %r" % fields.get(b"connection"))
    accepts = fields.get(b"sec-websocket-accept", [])
    if not accepts or any(v != accept_key(key) for v in accepts):
        fails.append("Sec-WebSocket-Accept %r" % accepts)
    elif len(accepts) > 1:
        odd.append("Sec-WebSocket-Accept twice")
    extensions = fields.get(b"sec-websocket-extensions", [])
    if any(extensions):
        fails.append("an extension not offered")
    elif extensions:
        odd.append("an empty Sec-WebSocket-Extensions")
    chosen = fields.get(b"sec-websocket-protocol", [])
    if len(chosen) > 1 or chosen == [b""]:
        odd.append("Sec-WebSocket-Protocol %r" % chosen)
    elif chosen and chosen[0].decode("latin-1") not in offered:
        fails.append("a subprotocol not offered")
    if fails:
        return "fail", "; ".join(fails), end + 4
    if odd:
        return "either", "; ".join(odd), end + 4
    return "ok", "", end + 4


def expect(case, head, key):
    """The oracle: what a correct client does with head (as sent, the wire after it included)."""
    verdict, why, size = handshake_verdict(head, key, case.protocols)
    v = Verdict(verdict, why, complete=size is not None)
    if size is not None:
        _frames(v, head[size:], case)
    return v


def _utf8_prefix_ok(data):
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        return True
    except UnicodeDecodeError:
        return False


def _frames(v, data, case):
    # RFC 6455 sections 5 and 7, client side, over data: v.main and v.others
    limit = DEFAULT_MAX if case.max_msg_size is None else case.max_msg_size or float("inf")
    messages, pings, others = [], [], []
    message = None  # the fragmented message under way: [opcode, payload so far]

    def other(end):
        others.append(Course(list(messages), end, list(pings)))

    def fail(codes, why):
        return End("fail", codes=frozenset(codes), why=why)

    def data_ends(inside):
        # the bytes end here: what the server does next decides
        if case.ending == "reset":
            return End("reset")
        if case.ending == "fin":
            if inside:
                return End("cut")
            return End("eof|cut", why="between fragments") if message else End("eof")
        return End("stall", why="inside a frame" if inside else "")

    def walk():
        nonlocal message
        p = 0
        while True:
            if message and message[0] == 1 and not _utf8_prefix_ok(bytes(message[1])):
                other(fail({1007}, "text no UTF-8 can continue (failing fast)"))
            have = len(data) - p
            if have < 2:
                return data_ends(have > 0)
            b0, b1 = data[p], data[p + 1]
            fin, rsv, op, masked, n = b0 & 0x80, b0 & 0x70, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            size = {126: 4, 127: 10}.get(n, 2) + (4 if masked else 0)
            if have < size - (4 if masked else 0):
                return data_ends(True)
            if n == 126:
                n = int.from_bytes(data[p + 2:p + 4], "big")
                minimal = n >= 126
            elif n == 127:
                n = int.from_bytes(data[p + 2:p + 10], "big")
                minimal = n >= 65536
            else:
                minimal = True
            bad = []
            if masked:
                bad.append("a masked frame")
            if rsv:
                bad.append("RSV bits")
            if op in (3, 4, 5, 6, 7) or op > 10:
                bad.append("opcode %d" % op)
            if op >= 8 and (not fin or n > 125):
                bad.append("a control frame fragmented or over 125 bytes")
            if op == 0 and not message:
                bad.append("a continuation with no message")
            if op in (1, 2) and message:
                bad.append("a new message inside a fragmented one")
            if n >> 63:
                bad.append("a length with its top bit set")
            codes = {1002} if bad else set()
            if op < 3 and (len(message[1]) if message else 0) + n > limit:
                codes.add(1009)
                bad.append("over max_msg_size")
            if codes:
                return fail(codes, "; ".join(bad))
            if not minimal:
                other(fail({1002}, "a length not minimally encoded"))
            if op < 3 and (len(message[1]) if message else 0) + n > HEAP_LIMIT:
                other(fail({1009}, "a message of %d bytes the heap may not hold" % n))
            if have < size + n:
                return data_ends(True)
            payload = bytes(data[p + size:p + size + n])
            p += size + n
            if op == 9:
                if case.autoping:
                    pings.append(payload)
                else:
                    messages.append(("ping", payload))
            elif op == 10:
                if not case.autoping:
                    messages.append(("pong", payload))
            elif op == 8:
                if len(payload) == 1:
                    return fail({1002}, "a Close with a 1-byte payload")
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                try:
                    reason = payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return fail({1007, 1002}, "a Close reason that is no UTF-8")
                if payload and code not in VALID_CODES | LATER_CODES:
                    return fail({1002}, "close code %d" % code)
                if code in LATER_CODES:
                    other(fail({1002}, "close code %d" % code))
                return End("close", code, reason)
            else:
                if op:
                    message = [op, bytearray()]
                message[1] += payload
                if fin:
                    op, body = message
                    message = None
                    if op == 1:
                        try:
                            body.decode("utf-8")
                        except UnicodeDecodeError:
                            return fail({1007}, "text that is no UTF-8")
                    messages.append(("text" if op == 1 else "binary", bytes(body)))

    end = walk()
    v.main = Course(messages, end, pings)
    v.others = others


# ---------------------------------------------------------------- the judge

def _message(kind, payload):
    # a message as tests/mpy/wsfuzzclient.py reports it
    if kind in ("text", "binary"):
        return [1 if kind == "text" else 2, len(payload), hashlib.sha256(payload).hexdigest()[:16]]
    return [9 if kind == "ping" else 10, payload.hex()]


def _ends_as(path, api, got_messages, got):
    # whether the client's report (messages, end) is this path: -> None, or what differs
    want = [_message(k, p) for k, p in path.messages]
    msgs = [m[:3] if m[0] in (1, 2) else m for m in got_messages]
    end = path.end
    finals = msgs[len(want):]
    if msgs[:len(want)] != want:
        return "messages"
    if end.kind in ("stall",):
        return None if not finals and got["end"] == "timeout" else "end"
    closing = {"close": [8, end.code, end.reason], "eof": [257]}
    if end.kind in closing:
        if got["close_code"] != (1006 if end.kind == "eof" else end.code):
            return "close_code"
        if api == "iter":
            return None if not finals and got["end"] == "stop" else "end"
        return None if finals == [closing[end.kind]] else "end"
    if end.kind == "eof|cut" and (finals == [] and api == "iter" or finals == [[257]]) and got["end"] != "timeout":
        return None if got["close_code"] == 1006 else "close_code"
    if len(finals) != 1 or finals[0][0] != 258 or got["end"] == "timeout":
        return "end"
    error = finals[0]
    if end.kind == "fail":
        if error[1] != "WebSocketError" or error[2] not in end.codes or got["close_code"] != error[2]:
            return "failure"
        return None
    if error[1] == "WebSocketError" or not error[3] or got["close_code"] != 1006:  # error[3]: a ClientError
        return "failure"
    return None


def judge(case, verdict, result, record):
    """-> a list of what went wrong (empty: the client did as RFC 6455 and our documentation say)"""
    problems = []
    outcome = result.get("outcome")
    if outcome != "ok":
        return ["%s: %s%s" % (outcome, result.get("error"), "\n" + result["trace"] if result.get("trace") else "")]
    if result["fds"]:
        problems.append("%d file descriptors left" % result["fds"])
    if result["next"] != "ok":
        problems.append("the next websocket on the session: %s" % result["next"])
    if result["ms"] > BOUND_MS:
        problems.append("took %d ms" % result["ms"])
    for note in result.get("notes", []):
        problems.append("broken promise: %s" % note)
    if record.errors:
        problems.append("the client's frames: %s" % "; ".join(record.errors))
    shook = result["handshake"] == "ok"
    if not shook:
        if case.ending == "reset" and result["client_error"]:
            pass  # a reset may take the answer with it: Linux drops what the client had not read yet
        elif verdict.handshake == "ok":
            problems.append("handshake refused (%s) where it must succeed" % result["error"])
        elif not result["client_error"]:
            problems.append("handshake failed with a foreign exception: %s" % result["error"])
        elif verdict.handshake == "fail" and verdict.complete and result["error_type"] != "WSServerHandshakeError":
            problems.append("a complete but bad answer gave %s, not WSServerHandshakeError" % result["error"])
        return problems
    if verdict.handshake == "fail":
        return problems + ["handshake accepted where it must fail (%s)" % verdict.why]
    paths = [verdict.main] + verdict.others
    if case.api == "closer" and result["messages"][-1:] == [[256]]:
        return problems + _closed_early(paths, case, result, record)
    match = next((p for p in paths if _ends_as(p, case.api, result["messages"], result) is None), None)
    if match is None and case.ending == "reset":
        match = _cut_short(paths, result, lambda last: last[0] == 258 and last[1] != "WebSocketError" and last[3]
                           or last == [257] and case.api in ("echo", "closer") and result["exception"])
    if match is None and case.heartbeat:
        match = _cut_short(paths, result, lambda last: last[:2] == [258, "ServerTimeoutError"])
    closed_first = case.api == "closer" and _close_sent_first(case, result, record)
    if match is None and closed_first:
        # the server ends the connection in answer to our Close, maybe before close() woke the reader
        match = _cut_short(paths, result, lambda last: last[0] == 258 and last[1] != "WebSocketError" and last[3]
                           or last == [257])
    if match is None:
        problems.append("messages and end differ: %s" % _difference(verdict.main, case.api, result))
        return problems
    if case.ending != "reset" and match.end.kind != "heartbeat" and not closed_first:
        problems += _replies(match, case, record, result)  # (a reset may take the client's frames with it)
    elif closed_first:
        problems += _sent_data(case, record)
    # close() after the end has nothing to do; after a stall, or a Close async for ended on with autoclose=False,
    # it closes
    closes = match.end.kind == "stall" or case.api == "iter" and not case.autoclose and match.end.kind == "close"
    if result["close_returned"] is not closes:
        problems.append("close() returned %r after %s" % (result["close_returned"], match.end))
    if case.api != "iter" and match.end.kind != "stall" and result["after"] != 257:
        problems.append("receive() after the end gave type %s, not CLOSED" % result["after"])
    return problems


def _closed_early(paths, case, result, record):
    # "closer": close() from another task after close_after messages made receive() return CLOSING; what came
    # before it must be a path's first messages (at least close_after of them), what came after is drained
    got = [m[:3] if m[0] in (1, 2) else m for m in result["messages"][:-1]]
    problems = []
    if not any(got == [_message(k, x) for k, x in p.messages][:len(got)] for p in paths) or len(got) < case.close_after:
        problems.append("messages before CLOSING differ: %s" % _difference(paths[0], case.api, result))
    problems += _sent_data(case, record)
    closes = [p for op, p in record.frames if op == 8]
    if case.ending != "reset" and closes[:1] != [struct.pack(">H", 1000)]:
        problems.append("close() sent %r, not a Close with 1000 first" % closes)
    if result.get("closer") is not True or result["after"] != 257:
        problems.append("close() returned %r, then receive() gave %s" % (result.get("closer"), result["after"]))
    return problems


def _close_sent_first(case, result, record):
    # "closer": close() may have sent its Close (1000) before the reader met the end: then it is the one Close
    got = len(result["messages"]) - 1
    closes = [p for op, p in record.frames if op == 8]
    return got >= case.close_after and closes[:1] == [struct.pack(">H", 1000)]


def _cut_short(paths, result, cut):
    # A course's first messages, then an end cut(last message) accepts -> that course, cut short; or None. A reset
    # drops what the server's socket had not sent yet (a connection error, or CLOSED when a send met the reset
    # first, with exception() set); a heartbeat whose pings no one answers fails a quiet connection at any point.
    got = result["messages"]
    head = [m[:3] if m[0] in (1, 2) else m for m in got[:-1]]
    if not got or not cut(got[-1]) or result["end"] == "timeout":
        return None
    for p in paths:
        if head == [_message(k, x) for k, x in p.messages][:len(head)]:
            return Course(p.messages[:len(head)], End("heartbeat" if got[-1][:2] == [258, "ServerTimeoutError"]
                                                      else "cut short"), [])
    return None


def _replies(path, case, record, result):
    # what the client sent back: each ping answered in order, and the Close its end calls for
    problems = []
    pongs = [p for op, p in record.frames if op == 10]
    closes = [p for op, p in record.frames if op == 8]
    if case.autoping and pongs != path.pings[:len(pongs)]:
        problems.append("pongs %r for pings %r" % (pongs, path.pings))
    elif case.autoping and len(pongs) < len(path.pings):
        problems.append("%d of %d pings answered" % (len(pongs), len(path.pings)))
    if not case.autoping and pongs:
        problems.append("pongs sent with autoping=False: %r" % pongs)
    problems += _sent_data(case, record)
    if case.api == "echo":
        echoed = [(op, p) for op, p in record.frames if op in (1, 2) and not (op == 1 and p.startswith(b"\0chat "))]
        delivered = [(1 if k == "text" else 2, p) for k, p in path.messages if k in ("text", "binary")]
        if echoed != delivered:
            problems.append("echoed %s for the messages %s" % (_short([(op, p[:20]) for op, p in echoed]),
                                                                _short([(op, p[:20]) for op, p in delivered])))
    end = path.end
    # the Close the end calls for: the server's code echoed (none for none), the failure's code, or the fuzz
    # client's own close() after a stall (1000)
    echo = b"" if end.code == 1005 else struct.pack(">H", end.code or 0)
    want = {"close": echo if case.autoclose else struct.pack(">H", 1000),
            "fail": struct.pack(">H", result["close_code"] or 0), "stall": struct.pack(">H", 1000)}.get(end.kind)
    if want is not None and (not closes or closes[0] != want):
        problems.append("sent Close %r, where %s calls for %r" % (closes, end, want))
    return problems


def _sent_data(case, record):
    # the data frames the client sent: the chatter's in order ("echo", "closer"), the echoes ("echo"); nothing after
    # its Close
    problems = []
    data = [(op, p) for op, p in record.frames if op in (1, 2)]
    others = [op for op, p in record.frames if op not in (1, 2, 8, 10) and not (op == 9 and case.heartbeat)]
    if others or data and case.api not in ("echo", "closer"):
        problems.append("the client sent frames of opcodes %r" % (others or [op for op, p in data]))
    chat = [p for op, p in data if op == 1 and p.startswith(b"\0chat ")]
    if chat != [b"\0chat %d" % k for k in range(len(chat))]:
        problems.append("the chatter's messages came as %r" % chat[:10])
    if case.api == "closer" and len(chat) != len(data):
        problems.append("the client sent data frames that were not the chatter's")
    closes = [p for op, p in record.frames if op == 8]
    if len(closes) > 1 or closes and record.frames[-1][0] != 8:
        problems.append("Closes sent: %r, then more" % closes)
    return problems


def _difference(path, api, result):
    want = [_message(k, p) for k, p in path.messages]
    return "expected %d messages %s then %s; got %d: %s, end %s, close_code %s" % (
        len(want), _short(want), path.end, len(result["messages"]), _short(result["messages"]), result["end"],
        result["close_code"])


def _short(items, n=8):
    shown = [m if len(repr(m)) < 80 else repr(m)[:80] + "..." for m in items[:n]]
    return "%r%s" % (shown, " ..." if len(items) > n else "")


# ---------------------------------------------------------------- the server

class Record:
    # one case's connection as the server saw it
    def __init__(self, key):
        self.key = key
        self.head = b""  # head and wire as sent
        self.frames = []  # the client's frames: (opcode, unmasked payload)
        self.errors = []  # what was wrong with them
        self.done = threading.Event()


class WSFuzzServer(FuzzServer):
    """Loopback server for the cases: /case/ID answers the handshake with the case's head (the accept value made
    for the client's key) and writes its wire as the case says, then ends as it says; /good/ID is a clean websocket
    that echoes one message and closes with 1000. (Plain TCP: the HTTP fuzzer's server, its handler and its
    cases replaced.)"""

    def __init__(self):
        socketserver.ThreadingTCPServer.__init__(self, (HOST, 0), _Handler)
        self.port = self.server_address[1]
        self._tls = None
        self.cases = {}
        self.records = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, case):
        """-> (the case's id, its URL, the URL of the next websocket)"""
        with self._lock:
            self._next += 1
            self.cases[self._next] = case
        base = "ws://%s:%d" % (HOST, self.port)
        return self._next, "%s/case/%d" % (base, self._next), "%s/good/%d" % (base, self._next)

    def record(self, ident, timeout=5):
        """The case's connection, once the server is done with it"""
        end = time.monotonic() + timeout
        while ident not in self.records and time.monotonic() < end:
            time.sleep(0.01)
        r = self.records.get(ident)
        if r is None:
            r = Record("")
            r.errors.append("no connection came")
        elif not r.done.wait(max(0, end - time.monotonic())):
            r.errors.append("the connection was still open %d s after the client's report" % timeout)
        return r


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(10)
        from tools.wsservers import _Frames, handshake_answer

        reader = _Frames(sock)
        try:
            head = reader.until(b"\r\n\r\n").decode("latin-1")
        except (OSError, EOFError):
            return
        path = head.split(" ")[1] if " " in head else ""
        key = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                    if line.lower().startswith("sec-websocket-key:")), "")
        m = re.fullmatch(r"/(case|good)/([0-9]+)", path)
        if not m:
            return
        ident = int(m.group(2))
        if m.group(1) == "good":
            try:
                sock.sendall(handshake_answer(key))
                op, payload = reader.next()
                sock.sendall(_encode(op, payload) + _encode(8, struct.pack(">H", 1000)))
                while reader.next()[0] != 8:
                    pass
            except (OSError, EOFError, ValueError):
                pass
            return
        case = self.server.cases[ident]
        record = Record(key)
        self.server.records[ident] = record
        try:
            self._serve(sock, reader, case, record)
        finally:
            sock.close()
            record.done.set()

    def _serve(self, sock, reader, case, record):
        data = case.head_for(record.key) + case.wire
        record.head = data
        sent = threading.Event()
        send_lock = threading.Lock()
        t = threading.Thread(target=_read_client, args=(sock, reader, case, record, sent, send_lock), daemon=True)
        t.start()
        pos = 0
        try:
            with send_lock:
                for end, pause in case.writes:
                    sock.sendall(data[pos:end])
                    pos = end
                    if pause:
                        time.sleep(pause)
                sock.sendall(data[pos:])
        except OSError:
            pass
        sent.set()
        if case.ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # the reader's recv() would hold the socket open past close(): SHUT_RD ends it, sending nothing
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # (the client is gone already)
            t.join(10)
            return
        if case.ending == "fin":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t.join(10)


def _read_client(sock, reader, case, record, sent, send_lock):
    # the client's frames, until its Close (answered in the "stall" ending) or the connection's end
    try:
        while True:
            op, payload = reader.next()
            record.frames.append((op, payload))
            if op == 8:
                # our Close answers theirs only where the wire stopped between frames: after part of a frame its
                # bytes would go on that frame (the client would read "x" and our Close as a masked frame)
                if case.ending == "stall" and sent.wait(10) and not _stalled_inside_a_frame(case, record):
                    with send_lock:
                        sock.sendall(_encode(8, payload[:2]))
                if case.ending in ("stall", "close"):
                    return  # the server closes the TCP connection (RFC 6455 section 7.1.1)
    except ValueError as e:
        record.errors.append(str(e))
    except (OSError, EOFError):
        pass
    # (mute, fin: until the client closes its end)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _stalled_inside_a_frame(case, record):
    main = expect(case, record.head, record.key).main
    return main is not None and main.end.kind == "stall" and main.end.why == "inside a frame"


def _encode(op, payload):
    return Frame(op, payload).encode()


# ---------------------------------------------------------------- the client on MicroPython

class Client(_Client):
    """One long-lived MicroPython process running tests/mpy/wsfuzzclient.py"""
    script = "wsfuzzclient.py"


def job(case, url, good_url):
    """The JSON line for tests/mpy/wsfuzzclient.py."""
    return {"i": case.index, "url": url, "good_url": good_url, "api": case.api, "protocols": case.protocols,
            "autoping": case.autoping, "autoclose": case.autoclose, "close_after": case.close_after,
            "max": case.max_msg_size, "heartbeat": case.heartbeat, "read_timeout": READ_TIMEOUT, "answer_timeout": ANSWER_TIMEOUT,
            "close_timeout": CLOSE_TIMEOUT, "deadline": BOUND_MS / 1000}


def describe(case, verdict=None):
    """The case in words and bytes, for a failure report."""
    sample = verdict is None
    if sample:
        verdict = expect(case, case.head_for("dGhlIHNhbXBsZSBub25jZQ==") + case.wire, "dGhlIHNhbXBsZSBub25jZQ==")
    out = ["%s: %s%s, protocols %r, autoping=%s, autoclose=%s, max_msg_size=%s, heartbeat=%s" % (
        case.name, case.api, " after %d" % case.close_after if case.api == "closer" else "", case.protocols,
        case.autoping, case.autoclose, case.max_msg_size, case.heartbeat),
           "frames before mutation: %s" % ", ".join(
               "%s%s%s(%d)" % (OP_NAMES.get(f.op, f.op), "" if f.fin else "~", "" if not f.op == 8 else
                                " %r" % f.payload[:2], len(f.payload)) for f in case.frames),
           "mutations: %s" % ("; ".join(case.mutations) or "none"),
           "then: %s" % case.ending,
           "writes: %s" % (", ".join("%d (+%.1f ms)" % (e, p * 1000) for e, p in case.writes) or "one"),
           "head%s: %r" % (" (for a sample key)" if sample else "", case.head_for("dGhlIHNhbXBsZSBub25jZQ==")),
           "wire (%d bytes): %r" % (len(case.wire), case.wire if len(case.wire) < 400 else case.wire[:400] + b"..."),
           "oracle: handshake %s%s" % (verdict.handshake, " (%s)" % verdict.why if verdict.why else "")]
    if verdict.main:
        out.append("oracle: %d messages %s, then %s" % (len(verdict.main.messages), _short(
            [(k, p[:20]) for k, p in verdict.main.messages]), verdict.main.end))
        for o in verdict.others:
            out.append("   or: the first %d, then %s" % (len(o.messages), o.end))
    return "\n  ".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/wsfuzz.py SEED CASE")
    print(describe(make_case(sys.argv[1], int(sys.argv[2]))))
