# Helpers for test snippets running on MicroPython (on MICROPYPATH in tests only; never frozen).
import json
import sys


def result(**kw):
    # One structured line per call; the pytest side parses these.
    sys.stdout.write("@@RESULT " + json.dumps(kw) + "\n")


def sha256(data):
    import hashlib
    import binascii

    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def sha256_file(path):
    import hashlib
    import binascii

    h = hashlib.sha256()
    buf = bytearray(4096)
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    return binascii.hexlify(h.digest()).decode()


def out_of_heap():
    # -> MicroPython's one emergency MemoryError, as an allocation in a full heap raises it
    import micropython

    micropython.heap_lock()
    try:
        bytearray(1)
    except MemoryError as e:
        return e
    finally:
        micropython.heap_unlock()


def made_in_a_full_heap(kind):
    # An exception of this kind made in a full heap, and dropped: made in the emergency object, so a MemoryError
    # under way is of this kind from now on (what a cleanup that makes and catches an exception does to it)
    import micropython

    micropython.heap_lock()
    kind()
    micropython.heap_unlock()


def exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def size(path):
    # bytes in the file, -1 when it does not exist
    import os

    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def fd_count():
    import os

    return len(os.listdir("/proc/self/fd"))


def fds_left(base, when=""):
    # [] or ["N fds left<when>"]: what is still open of the descriptors opened since fd_count() was base
    left = fd_count() - base
    return ["%d fds left%s" % (left, when)] if left else []


def leave_free(n):
    # Fill the heap but for n bytes in one piece: a test then sees what a device with n bytes free would,
    # whatever the imports before it cost and however many holes they left. The n bytes are taken first (first
    # fit puts them near the free end), everything else is filled with ever smaller blocks, then they are let go.
    # Not right at the free end when there is room: a stale word in a live object, left by a temporary that lay
    # there (the compiler's), would keep them from being let go; 16 KB before them go into the filling.
    # A chain of pairs, not a list: a growing list would leave holes of its own. Keep the returned chain alive.
    import gc

    gc.collect()
    try:
        gap = bytearray(16384)
        spare = bytearray(n)
    except MemoryError:
        gap = None
        spare = bytearray(n)
    gap = None
    keep = fill(None)
    spare = None
    return keep


def leave_holes(*sizes):
    # Fill the heap but for holes of these sizes, each in one piece, apart, in this order up the heap (first fit then
    # takes small blocks from the first): a heap with that much free but no run longer than the largest hole. They
    # are cut from one block that the rest of the heap is filled around, so nothing else lands between them.
    import gc

    gc.collect()
    room = bytearray(sum(sizes) + 256 * len(sizes))  # (and room for the pairs that keep them)
    keep = fill(None)
    room = None
    gc.collect()
    holes = None
    for n in sizes:
        holes = (bytearray(n), holes)
        keep = (bytearray(0), keep)  # (live: the hole and the next stay apart)
    keep = fill(keep)
    holes = None
    return keep


def squeeze(singles):
    # Every free block of the heap taken, singles' items last (floats: one block each) -> a chain to keep alive. What
    # the caller made just before and lets go after is then the only room, first fit taking it in order. Fill the
    # chain once more (fill) after this returns: this frame is on the heap (design.md).
    import gc

    keep = (singles, None)
    i = 0
    for _ in range(3):  # (an allocation that fails collects first: what that lets go is filled the next time)
        gc.collect()
        keep = fill(keep)
        try:
            while i < len(singles):
                singles[i] = i + 0.5
                i += 1
        except MemoryError:
            pass
    return keep


def fill(keep):
    # the heap's free blocks, filled with ever smaller ones chained to keep -> the chain
    size = 4096
    while size >= 16:
        try:
            while True:
                keep = (bytearray(size - 16), keep)
        except MemoryError:
            size //= 4
    return keep


def slots_taken():
    # the connection slots DownloadManager's downloads hold now
    from mpos.net import admission

    return admission._in_use


def slot_queue():
    # the priorities of the downloads waiting for a connection slot, in the order they will get one
    from mpos.net import admission

    return [priority for priority, granted in admission._waiting]


def session_users():
    # the downloads and posts holding DownloadManager's shared session
    from mpos.net import admission

    return admission._users


def heap_in_use():
    # gc.mem_alloc() after a collection, with the dead C stack below this call overwritten first: the unix port's
    # collector scans the stack conservatively, and words a deeper call left there keep its garbage alive (how
    # many depends on how the binary was compiled, not on the code measured).
    import gc

    _overwrite_stack(40)
    gc.collect()
    return gc.mem_alloc()


def _overwrite_stack(depth):
    return _overwrite_stack(depth - 1) if depth else 0


def run(coro):
    import asyncio

    return asyncio.run(coro)


# --- helpers for the HTTP client tests (tests/test_http_*.py) ---

def new_sha():
    import hashlib

    return hashlib.sha256()


def hexdigest(h):
    import binascii

    return binascii.hexlify(h.digest()).decode()


async def sha_readinto(resp, size=4096):
    # Body through resp.content.readinto(buf): -> (sha256 hex, bytes, number of reads).
    h = new_sha()
    buf = bytearray(size)
    mv = memoryview(buf)
    total = reads = 0
    while True:
        n = await resp.content.readinto(buf)
        if not n:
            break
        assert 0 < n <= size, n
        h.update(mv[:n])
        total += n
        reads += 1
    return hexdigest(h), total, reads


async def sha_read_n(resp, n, nowait=False):
    # Body through resp.content.read(n): each piece at most n bytes, b"" at the end (and after it). nowait: the
    # bytes already here first, through read_nowait(n), as DownloadManager's stream mode reads.
    h = new_sha()
    total = 0
    while True:
        piece = resp.content.read_nowait(n) if nowait else b""
        if not piece:
            piece = await resp.content.read(n)
        assert isinstance(piece, bytes), type(piece)
        assert len(piece) <= n, (len(piece), n)
        if not piece:
            break
        h.update(piece)
        total += len(piece)
    assert await resp.content.read(n) == b""
    return hexdigest(h), total


def described(e):
    # "ClassName: message", for a report
    return "%s: %s" % (type(e).__name__, e)


def traceback_of(e):
    import io

    out = io.StringIO()
    sys.print_exception(e, out)
    return out.getvalue()


async def error_of(coro):
    # Await coro; -> the name of the exception it raised (None if none) and its message.
    try:
        await coro
    except Exception as e:
        return type(e).__name__, str(e)
    return None, None


async def turns_during(aw):
    # Await aw beside a task that counts its turns; -> (aw's result, the turns the event loop gave that task
    # meanwhile): how often the work let the UI run
    import asyncio

    turns = [0]
    done = []

    async def count():
        while not done:
            await asyncio.sleep(0)
            turns[0] += 1

    task = asyncio.create_task(count())
    await asyncio.sleep(0)
    before = turns[0]
    try:
        return await aw, turns[0] - before
    finally:
        done.append(True)
        await task


def record_ranges():
    # Patch the client so every GET's Range and If-Range headers are noted: -> the list they go into.
    import aiohttp

    sent = []
    get = aiohttp.ClientSession.get

    def rec(self, url, **kw):
        h = {k.lower(): v for k, v in (kw.get("headers") or {}).items()}
        sent.append([h.get("range"), h.get("if-range")])
        return get(self, url, **kw)

    aiohttp.ClientSession.get = rec
    return sent


# --- helpers for the websocket tests (tests/test_websocket*.py) ---

def ws_session(ca=None, **kw):
    # A ClientSession for ws:// (ca None) or for wss:// to a server whose certificate the test CA at ca signed
    import aiohttp

    return aiohttp.ClientSession(ssl=aiohttp.tls_context(ca) if ca else None, **kw)


def pattern(n, text=False):
    # n deterministic bytes: every byte value in turn, or (text) printable ASCII as a str
    if text:
        return ("0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))
