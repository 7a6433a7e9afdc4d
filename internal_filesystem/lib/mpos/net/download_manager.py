# DownloadManager: MicroPythonOS's shared HTTP download service (a module-level singleton).
#
#   data = await DownloadManager.download_url(url)                    # memory mode -> bytes or None
#   ok = await DownloadManager.download_url(url, outfile="/sd/a.mpk") # file mode   -> True/False
#   ok = await DownloadManager.download_url(url, chunk_callback=cb)   # stream mode -> True/False
#
# The path of a byte: aiohttp's resp.content.readinto(buf) fills the chunk buffer (1 KB by default, one shared
# by a thread's downloads), whose bytes go to the partial file, the memory buffer or the chunk callback before the
# next await (see _Job.run).
#
# What it guarantees beyond the documented contract:
# - File mode writes OUTFILE.part and renames it over OUTFILE only after a complete (and, with sha256=,
#   verified) body, so a failed download never leaves a broken file where a good one was.
# - A dropped or stalled connection is resumed with Range (+ If-Range) from the byte where it stopped; the
#   answer is checked (206 + matching Content-Range) before a single byte is appended.
# - Transient HTTP/network failures are retried with exponential backoff and jitter, within a small budget.
# - Failures return None/False as documented; raise_errors=True raises a DownloadError subclass instead.

import asyncio
import sys
from errno import ECONNREFUSED
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

from .._log import warning
from ..task_manager import TaskManager

_CHUNK = const(1024)
_MIN_READ = const(128)  # the smallest read buffer taken when the heap has no room for a whole chunk
_TRIES = const(3)  # failed attempts in a row (no byte gained) before giving up: the spec's "3 tries"
_READ_TIMEOUT = const(10)  # seconds without a byte before an attempt counts as failed
_ASSUMED_SIZE = const(102400)  # progress denominator when no size is known (the spec's 100 KB)
_SPEED_MS = const(1000)

_TRANSIENT = (408, 429, 500, 502, 503, 504)


class DownloadError(Exception):
    """Why a download failed. reason: "http", "network", "timeout", "integrity", "file" or "memory"."""

    reason = "error"
    retry = False

    def __init__(self, msg, status=None, retry=None, after=None):
        super().__init__(msg)
        self.status = status
        if retry is not None:
            self.retry = retry
        self.after = after  # server's Retry-After, seconds


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


class OutOfMemory(DownloadError):
    reason = "memory"


class TLSError(DownloadError):
    # the server's certificate did not verify against DownloadManager.ca: trying again cannot help
    reason = "tls"


class _CallbackError(Exception):
    # What an app's callback raised, carried past the retry logic: it is the app's, never retried, and reaches
    # the caller unchanged (see _failed)
    def __init__(self, error):
        super().__init__(error)
        self.error = error


# --- the shared session --------------------------------------------------------------------------------------
# Guarded by a _thread lock (apps may call from threads); the lock is never held across an await.

try:
    import _thread

    _lock = _thread.allocate_lock()
except ImportError:  # a port without threads
    _thread = None

    class _NoLock:
        def __enter__(self):
            pass

        def __exit__(self, *a):
            pass

    _lock = _NoLock()

_session = None
_tls = None  # (the value of `ca` it was made for, its SSLContext): see _context
_refs = 0
_closer = None  # the task that closes the session after DownloadManager.session_idle_ms
_jobs = []  # downloads queued or in flight, for downloads()
_queue = []  # admission: [-priority, seq, event, granted] of waiting downloads
_active = 0
_seq = 0
_bufs = {}  # thread id -> (read buffer, its memoryview) that thread's downloads share (see _buffer)


def _acquire():
    global _session, _refs, _closer
    with _lock:
        if _session is None:
            try:
                import aiohttp
            except ImportError:
                return None
            _session = aiohttp.ClientSession()
        _refs += 1
        closer, _closer = _closer, None
    if closer is not None:
        _cancel(closer)
    return _session


_len = len  # a module global is found by hash; a builtin by a search of the builtins table, per call


def _buffer(size):
    # Downloads on one thread (one event loop) share one read buffer: our client writes into it only once back
    # from its last wait, and _Job.run hands the bytes on before it awaits anything, so no two downloads ever
    # have bytes in it at once. With 8 in flight that is 7 KB less. Let go when the last download ends.
    # -> (buffer, a memoryview of it): the view is shared too.
    me = _thread.get_ident() if _thread else 0
    with _lock:
        b = _bufs.get(me)
        if b is None or len(b[0]) != size:
            buf = _bytearray(size)
            b = _bufs[me] = (buf, memoryview(buf))
    return b


def _bytearray(size):
    # A heap cut into small pieces (imports leave it so on a small device) may have no free run of `size` bytes
    # while holding plenty in total: smaller reads are slower, but the download still works (chunk callbacks are
    # promised at most chunk_size bytes, not exactly that many).
    while True:
        try:
            return bytearray(size)
        except MemoryError:
            if size <= _MIN_READ:
                raise
            size >>= 1


def _fits(size):
    # Stream mode's read size: each read makes a bytes object of up to size bytes (plus a NUL), one free run a
    # heap cut into small pieces may not have. The largest that fits now, found once per attempt.
    return len(_bytearray(size + 1)) - 1


def _cancel(t):
    t.cancel()
    # A task cancelled before it first ran never enters TaskManager's cleanup (its `finally`), so it stayed in
    # TaskManager.task_list for good: one leaked entry per download that reused the idle session.
    if t in TaskManager.task_list:
        TaskManager.task_list.remove(t)


def _context():
    # The TLS context every request is made with: None (the session's own, unverified, as on today's
    # MicroPythonOS, whose devices carry no CA bundle) while `ca` is unset, else one that verifies against it,
    # made once per value. Connections are pooled per context, so setting `ca` applies to every connection made
    # after it, and one made under another setting never serves a request made under this one.
    global _tls
    now = DownloadManager.ca
    if now is None:
        return None
    made = _tls
    if made is None or made[0] is not now:
        import aiohttp

        made = _tls = (now, aiohttp.tls_context(now))
    return made[1]


def _release():
    global _session, _refs, _closer
    with _lock:
        _refs -= 1
        if not _refs:
            _bufs.clear()
        if _refs or _session is None:
            return
        idle = _session
        now = DownloadManager.session_idle_ms <= 0
        if now:
            _session = None
    if now:
        idle.shutdown()
        return
    # Made outside the lock: a create_task that runs the coroutine's first step at once must not find it held
    closer = TaskManager.create_task(_close_when_idle(idle))
    if closer is None:  # TaskManager is disabled: nothing would close it later
        _drop_session()
        return
    with _lock:
        if _session is idle and not _refs and _closer is None:
            _closer, closer = closer, None
    if closer is not None:  # a download came (or the session went) meanwhile
        _cancel(closer)


async def _close_when_idle(s):
    global _session, _closer
    await TaskManager.sleep_ms(DownloadManager.session_idle_ms)
    with _lock:
        if _session is not s or _refs:
            return
        _session = None
        _closer = None
    s.shutdown()


def is_session_active():
    """True while the shared session exists (during downloads and its short idle window)."""
    with _lock:
        return _session is not None


def _drop_session():
    global _session, _closer
    with _lock:
        s, _session = _session, None
        closer, _closer = _closer, None
    if closer is not None:
        _cancel(closer)
    if s is not None:
        s.shutdown()


async def close_session():
    """Close the shared session and every connection now. Rarely needed: sessions close when idle."""
    _drop_session()
    await asyncio.sleep(0)


# --- admission control --------------------------------------------------------------------------------------


async def _admit(priority):
    global _active, _seq
    if _active < DownloadManager.max_connections and not _queue:
        _active += 1
        return
    _seq += 1
    entry = [-priority, _seq, asyncio.Event(), False]
    _queue.append(entry)
    _queue.sort()  # highest priority first, FIFO within a level (seq)
    try:
        await entry[2].wait()
    except BaseException:
        if entry[3]:  # granted a slot while being cancelled: pass it on
            _leave()
        else:
            _queue.remove(entry)
        raise


def _leave():
    global _active
    if _queue and _active <= DownloadManager.max_connections:
        entry = _queue.pop(0)
        entry[3] = True
        entry[2].set()  # the slot passes straight to the next download
    else:
        _active -= 1


# --- helpers --------------------------------------------------------------------------------------------------


def _log(msg):
    # Failures only, once each, with the reason
    warning("DownloadManager", msg)


def _redact(text):
    # Every URL in text as scheme://host/…: paths and queries may carry keys (wallet apps), also those of a
    # redirect's target that an error quotes
    out = []
    i = text.find("://")
    while i >= 0:
        j = i + 3
        while j < len(text) and text[j] not in "/ \t'\"":
            j += 1
        k = j
        while k < len(text) and text[k] not in " \t'\"":
            k += 1
        out.append(text[:j] + ("/…" if k > j else ""))
        text = text[k:]
        i = text.find("://")
    out.append(text)
    return "".join(out)


async def _call(cb, arg):
    # Callbacks may be `async def` (as documented) or plain functions. What one raises is the app's (see run).
    try:
        r = cb(arg)
        if r is not None and hasattr(r, "send"):
            await r
    except Exception as e:
        raise e if isinstance(e, _CallbackError) else _CallbackError(e)


def _size(path):
    import os

    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def get_resume_position(outfile):
    """Bytes of partial data a Range request could continue from: OUTFILE.part if a failed download left
    one, else OUTFILE itself (a file written by an older version or by the app); 0 if neither exists."""
    part = outfile + ".part"
    n = _size(part)
    if n > 0:
        record = read_record(part)
        if record is None or "todo" in record:
            return 0  # a segmented partial (segments=) has holes: only segments= resumes it, by its record
    if n < 0:
        n = _size(outfile)
    return max(n, 0)


# --- what a .part is a part of -----------------------------------------------------------------------------
# OUTFILE.part.state, a small JSON record beside the .part: the URL's identity (a hash: URLs may carry keys),
# the resource's validator (ETag or Last-Modified) and size, and, for a segmented download, the ranges still
# missing ("todo"). A resume sends If-Range with the validator, so a resource that changed starts over.


def url_key(url):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(url.encode()).digest()[:8]).decode()


def read_record(part):
    # -> the record of `part`: {} when there is none, None when it can't be read (then nothing is vouched for)
    path = part + ".state"
    if _size(path) < 0:
        return {}
    try:
        import json

        with open(path) as f:
            record = json.loads(f.read())
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def write_record(part, record):
    # Written aside and renamed, so a kill leaves the old record or the new one, never half of one.
    path = part + ".state"
    try:
        import json

        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(record))
        _replace(path + ".tmp", path)
    except OSError as e:
        raise LocalFileError("cannot write %s: %s" % (path, e))


_NET_ERRNOS = (110, 104, 103, 113, 116, 118, 101, 32, 107, 202)
_NET_WORDS = ("connection reset", "connection aborted", "broken pipe", "network unreachable",
              "host unreachable", "failed to download chunk", "timed out", "timeout", "etimedout",
              "econnreset", "econnaborted", "ehostunreach", "addrinfo")


def _errno(e):
    # An exception's error number as an int, or None: an OSError's comes as a number, a negative one (ESP32,
    # mbedTLS), a str (the unix port's failed lookups: "[addrinfo error -3]") or not at all
    code = getattr(e, "errno", None)
    if code is None and e.args:
        code = e.args[0]
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def is_network_error(e):
    """True for errors worth retrying later: dropped, reset, timed-out or unreachable connections and DNS
    failures (unix and ESP32 errno numbers, also negated, as the network stack reports some)."""
    if isinstance(e, DownloadError):
        return isinstance(e, NetworkError)
    if isinstance(e, asyncio.TimeoutError):
        return True
    try:
        import aiohttp

        if isinstance(e, aiohttp.ClientSSLError):
            return False
        if isinstance(e, aiohttp.ClientConnectionError) or isinstance(e, aiohttp.ClientPayloadError):
            return not _refused(e)
    except ImportError:
        pass
    code = _errno(e)
    if code is not None and abs(code) in _NET_ERRNOS:
        return True
    msg = str(e).lower()
    for w in _NET_WORDS:
        if w in msg:
            return True
    return False


def _refused(e):
    code = _errno(e)
    return code is not None and abs(code) == ECONNREFUSED


def _classify(e, timeout):
    # Turn what an attempt raised into a DownloadError that says whether another try may help; None for what is
    # not ours to judge (an app's callback, a defect).
    import aiohttp

    if isinstance(e, DownloadError):
        return e
    if isinstance(e, aiohttp.ServerTimeoutError):
        return DownloadTimeout("no answer within timeout=%ss (%s)" % (timeout, e))
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return TLSError(str(e))
    if isinstance(e, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return NetworkError("connection lost: %s" % (e,))
    if isinstance(e, (aiohttp.ClientConnectionError, OSError)):
        return NetworkError("connection failed: %s" % (e,), retry=not _refused(e))
    if isinstance(e, aiohttp.ClientResponseError):
        return HTTPError("bad response: %s" % (e,), e.status)
    if isinstance(e, MemoryError):
        return OutOfMemory("out of memory")
    return None


def _retry_in(job, e, fails, end):
    # What an attempt raised -> seconds to wait before the next one, or the DownloadError that ends the download.
    # fails: attempts in a row that gained no byte (the spec's 3 tries); every attempt counts towards
    # max_reconnects and lengthens the wait, so a link that keeps dropping after a little progress ends too.
    err = _classify(e, job.timeout)
    if err is None:
        raise e
    job.reconnects += 1
    if not err.retry or fails >= job.tries or job.reconnects > DownloadManager.max_reconnects:
        raise err
    return _backoff(err, job.reconnects, end)


def _backoff(err, n, end):
    # Seconds before try n + 1: exponential with jitter, or the server's Retry-After; never over retry_max_ms.
    import random

    delay = err.after
    if delay is None:
        delay = DownloadManager.retry_base_ms * (1 << min(n - 1, 16)) / 1000 * (0.5 + random.random())
    delay = min(delay, DownloadManager.retry_max_ms / 1000)
    if end is not None and ticks_diff(end, ticks_ms()) / 1000 <= delay:
        raise DownloadTimeout("deadline reached")
    return delay


def _content_range(v):
    # "bytes a-b/N" -> (a, b, N or None for "*"); None for anything else, a range that ends before it starts or
    # past its total, and numbers no machine word holds
    try:
        unit, _, spec = v.strip().partition(" ")
        rng, _, total = spec.partition("/")
        a, _, b = rng.partition("-")
        a, b, n = int(a), int(b), (None if total.strip() == "*" else int(total))
    except (ValueError, AttributeError):
        return None
    if unit.lower() != "bytes" or not 0 <= a <= b or n is not None and b >= n or b > sys.maxsize:
        return None
    return a, b, n


def _range(v):
    # A caller's "bytes=a-" or "bytes=a-b" -> (a, b or None); other forms are passed through untouched.
    v = v.strip()
    if not v.startswith("bytes=") or "," in v:
        return None
    a, _, b = v[6:].partition("-")
    if not a.strip().isdigit() or (b.strip() and not b.strip().isdigit()):
        return None
    return int(a), (int(b) if b.strip() else None)


def _with_user_agent(h):
    # the User-Agent is ours unless the caller gave one
    if not any(k.lower() == "user-agent" for k in h):
        h["User-Agent"] = DownloadManager.user_agent or "MicroPythonOS/" + _version()
    return h


def _version():
    try:
        from mpos import info

        return info.CURRENT_OS_VERSION
    except (ImportError, AttributeError):
        return "0.0.0"


# --- one download -------------------------------------------------------------------------------------------


# download_url keyword -> _Job attribute, set only when given (see _Job)
_OPTS = (("progress_callback", "progress_cb"), ("speed_callback", "speed_cb"), ("chunk_size", "chunk"),
         ("sha256", "sha"), ("max_size", "max_size"), ("raise_errors", "raise_errors"), ("deadline", "deadline"),
         ("priority", "priority"), ("tries", "tries"), ("timeout", "timeout"))


class _Job:
    # State of one download; downloads() reports these same fields, so listing costs nothing extra.
    # Defaults live here, on the class: MicroPython has no __slots__, and an instance's attribute table grows in
    # steps (32 attributes took 640 bytes per download on the unix port), so __init__ sets only what differs.
    user_total = progress_cb = speed_cb = sha = max_size = raise_errors = deadline = None
    priority = 0
    chunk = _CHUNK
    tries = _TRIES
    timeout = _READ_TIMEOUT
    lo = 0  # resource bytes the caller wants: [lo, hi]
    hi = None
    have = 0  # bytes of the resource already in the partial file when this job began
    done = 0  # bytes delivered by this job
    size = None  # full resource size, once a response told it
    validator = None  # ETag or Last-Modified, for If-Range on a resume
    coded = False  # a response came gzip/deflate-coded: retries start over (see _request)
    skip = 0  # bytes of this response to drop before the wanted ones (a 200 answer to a range request)
    capped = False  # this response's body length is our range cap: the server announced none (see _accept)
    state = "queued"
    headers = {}  # the caller's, Range taken out (never changed in place: shared by jobs that have none)
    speed = 0
    f = mem = hash = None
    pct = -1
    outfile = chunk_cb = None
    redact = False
    reconnects = 0  # requests made again after a failure (see _retry_in)
    recorded = False  # the .part's record names this download's resource (see _note_part)

    def __init__(self, url, outfile, chunk_callback, total_size, headers, opts):
        self.url = url
        if opts.get("redact_url"):
            self.redact = True
        if outfile is not None:
            self.outfile = outfile
        if chunk_callback is not None:
            self.chunk_cb = chunk_callback
        if total_size is not None:
            self.user_total = total_size
        for key, attr in _OPTS:
            v = opts.get(key)
            if v is not None and (v or attr not in ("tries", "timeout")):  # 0 tries or seconds: the default
                setattr(self, attr, v)
        h = {}
        for k, v in (headers or {}).items():
            if k.lower() == "range":
                r = _range(v)
                if r is not None:
                    self.lo, self.hi = r
                    continue
            h[k] = v
        if h:
            self.headers = h

    def _request_headers(self):
        # What is sent: the caller's headers, and ours as the User-Agent unless the caller gave one. Built per
        # request and dropped once it is sent, so a download in flight holds no header dict.
        h = dict(self.headers)
        return _with_user_agent(h)

    @property
    def mode(self):
        return "file" if self.outfile else ("stream" if self.chunk_cb else "memory")

    @property
    def shown(self):
        # the URL as logs and downloads() show it
        return _redact(self.url) if self.redact else self.url

    @property
    def fail(self):
        return None if self.mode == "memory" else False

    def log(self, what):
        # one line about this download; the URL redacted if asked, also inside the reason (errors quote it)
        line = "download of %s %s" % (self.url, what)
        _log(_redact(line) if self.redact else line)

    # -- sinks --
    def _open_file(self):
        part = self.outfile + ".part"
        mode = "wb"
        if self.lo and self.hi is None:
            # A resume ("Range: bytes=N-", N = get_resume_position()): continue the partial data if it is
            # exactly N bytes long, whether it sits in OUTFILE.part or in OUTFILE itself.
            n = _size(part)
            if n == self.lo:
                if self._resumable(read_record(part)):
                    mode = "ab"
                else:  # the partial data is of something else: the caller wants this resource, all of it
                    self.lo = 0
            elif n < 0 and _size(self.outfile) == self.lo:
                _remove(part + ".state")  # (it described a .part that is gone)
                self._copy(self.outfile, part)
                mode = "ab"
            if mode == "ab":
                self.have, self.lo = self.lo, 0
        try:
            self.f = open(part, mode)
        except OSError as e:
            raise LocalFileError("cannot write %s: %s" % (part, e))
        if mode == "wb":
            _remove(part + ".state")  # it describes a .part that is gone
        if self.have and self.sha:
            self._hash_file(part)

    def _resumable(self, record):
        # Whether a .part with this record may be continued: not a segmented one (it has holes), not another
        # URL's. What it knows of the resource goes into If-Range and the checks of every answer.
        key = url_key(self.url)
        if record is None or "todo" in record or record.get("url", key) != key:
            return False
        for attr, key in (("validator", "v"), ("size", "size")):
            if record.get(key) is not None:
                setattr(self, attr, record[key])
        self.recorded = "url" in record
        return True

    def _note_part(self):
        # File mode, once its resource is known: the record beside the .part, before a byte goes into it
        if not self.recorded:
            write_record(self.outfile + ".part", {"url": url_key(self.url), "v": self.validator, "size": self.size})
            self.recorded = True

    def _copy(self, src, dst):
        try:
            with open(dst, "wb") as b:
                self._each_block(src, b.write)
        except OSError as e:
            raise LocalFileError("cannot copy %s to %s: %s" % (src, dst, e))

    def _hash_file(self, path):
        # sha256= over a resumed file: the bytes already on disk are hashed once, before new ones arrive
        self._each_block(path, self.hash.update)

    def _each_block(self, path, fn):
        # fn(block) for the file's content, a chunk-sized buffer at a time
        with open(path, "rb") as f:
            buf = bytearray(self.chunk)
            mv = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                fn(buf if n == len(buf) else mv[:n])

    def _restart(self):
        # The bytes we have are no part of the resource the server now sends (it ignored Range, or the resource
        # changed): throw them away, and what we knew of the resource with them.
        if self.mode == "stream" and self.done:
            raise NetworkError("the resource changed or Range was ignored after %d bytes were handed out"
                               % self.done, retry=False)
        if self.f is not None:
            self.f.close()
            self.f = open(self.outfile + ".part", "wb")
        if self.recorded:
            self.recorded = False
        if self.validator is not None:
            self.validator = None
        if self.size is not None:
            self.size = None
        self.have = self.done = 0
        self.pct = -1
        if self.sha:
            import hashlib

            self.hash = hashlib.sha256()

    def _mem_room(self, n, keep):
        # Memory mode keeps one buffer; when the size is known it is allocated once. The first `keep` bytes are
        # carried over when it has to grow. One byte more than needed: the bytes returned at the end keep their
        # data in a block of len + 1 (a NUL follows it), and a hole this buffer leaves must fit the next
        # download's result. Exact-size buffers left holes one block too small: of 10 downloads of 100 KB held
        # at once, 3 failed in a 1.6 MB heap with 0.8 MB free.
        m = self.mem
        if m is None or len(m) < n:
            if not _heap_holds(n + 1):  # (a length a server announced is not allocated blindly)
                raise OutOfMemory("a body of %d bytes does not fit in the heap" % n)
            new = bytearray(n + 1)
            if m is not None and keep:
                new[:keep] = memoryview(m)[:keep]
            self.mem = new

    # -- the engine --
    segmented = False  # Segmented: try its ranged connections first (see segments.py)

    async def run(self, sess=None):
        # The whole download as download_url() starts it (sess None): the shared session, an admission slot,
        # attempts until the body is complete (a failed one is retried while it may help, see _classify) and the
        # cleanup, also on cancellation. A segment of a Segmented download brings its session and only attempts.
        # The hot path is the inner loop: one buffer, readinto, hand the bytes on. Nothing in it allocates per chunk
        # in file and memory mode (stream mode allocates the bytes it hands out, and a short tail needs a slice).
        # All of it is this one coroutine frame, the request, checks and bookkeeping being plain functions: each
        # frame is heap held for as long as the body streams.
        admitted = None  # None: a segment, no bookkeeping; a whole download: False, then True once it has a slot
        if sess is None:
            sess = _enter(self)
            if sess is None:
                return self.fail
            admitted = False
        try:
            if admitted is False:
                await _admit(self.priority)
                admitted = True
                if self.segmented and await self._segments(sess):
                    return True
            end = self._begin()
            fails = 0
            while True:
                gained = self.done
                try:
                    self.state = "connecting"
                    resp = await self._request(sess, end)  # no `async with`: its context object would be held too
                    try:
                        left = self._accept(resp)  # bytes still to read, skipped ones included
                        self.state = "downloading"
                        # The reads that never wait are our client's (its response is its own content, so this holds
                        # nothing more); any aiohttp-like client works too, through the awaited reads alone. A bound
                        # method kept in a local would be one more object held for the length of the body.
                        rd = resp.content if hasattr(resp.content, "readinto_nowait") else None
                        if rd is not None:
                            # What the download needs of the head is copied (size, validator): let the text go. A
                            # CDN's head is often 1 KB or more, held for as long as the body streams.
                            resp.headers = None
                        f = self.f
                        size = self.chunk
                        # Stream mode reads no buffer: the bytes object the socket makes is the chunk handed out
                        # (a callback may keep it), so nothing is filled and copied, and no buffer is held.
                        buf = mv = None
                        if self.chunk_cb is None:
                            if rd is not None:
                                buf, mv = _buffer(size)  # shared with the thread's other downloads
                            else:
                                buf = _bytearray(size)
                                mv = memoryview(buf)
                            size = len(buf)  # smaller in a fragmented heap (see _bytearray)
                        else:
                            size = _fits(size)
                        # Few locals: each is a slot in this frame, held as long as the download, and the frame must
                        # fit a hole in a fragmented heap (test_a_chopped_heap...). One flag says whether a chunk has
                        # more to do than reach its sink, so a plain download looks none of that up per chunk.
                        extra = (self.skip or self.max_size is not None or self.hash is not None
                                 or self.progress_cb is not None or self.speed_cb is not None)
                        while left != 0:  # None: until the server closes or ends the chunked body
                            n = size if left is None or left >= size else left
                            # Bytes already waiting are taken without an await: no generator, no garbage per chunk.
                            if buf is None:
                                data = rd.read_nowait(n) if rd is not None else None
                                if not data:
                                    data = await resp.content.read(n)
                                n = _len(data)
                            else:
                                data = buf if n == size else mv[:n]
                                n = rd.readinto_nowait(data) if rd is not None else None
                                if n is None:
                                    n = await resp.content.readinto(data)
                            if not n:
                                if left and not self.capped:  # the server announced more than it sent
                                    raise NetworkError("response ended %d bytes early" % left)
                                break
                            if left is not None:
                                left -= n
                            if mv is not None and n != size:
                                data = mv[:n]
                            if extra:
                                if self.skip:  # a 200 answer to a range request: drop the bytes before the range
                                    if self.skip >= n:
                                        self.skip -= n
                                        continue
                                    data = data[self.skip :] if mv is None else mv[self.skip : n]
                                    n -= self.skip
                                    self.skip = 0
                                # max_size in every mode, also when no Content-Length announced the size, before a
                                # byte goes out
                                if self.max_size is not None and self.have + self.done + n > self.max_size:
                                    raise DownloadError("body exceeds max_size=%d" % self.max_size)
                                if self.hash is not None:
                                    self.hash.update(data)
                            # A chunk counts once it is where it goes (a callback returned), never before
                            if f is not None:
                                try:
                                    f.write(data)
                                except OSError as e:
                                    raise LocalFileError("cannot write %s.part: %s" % (self.outfile, e))
                            elif self.chunk_cb is not None:
                                try:
                                    data = self.chunk_cb(data)  # bytes of its own (see above): it may keep them
                                    if data is not None and hasattr(data, "send"):  # an async def callback's
                                        await data
                                except Exception as e:
                                    raise _CallbackError(e)
                                data = None
                            else:
                                self._store(data, self.done + n)
                            self.done += n
                            if extra and left != 0 and self._due():
                                await self._report()
                    finally:
                        resp.release()
                    if self.done > gained and self._missing() > 0:
                        continue  # a whole answer, shorter than asked (a server's range cap): ask for the rest
                    return await self._finish()
                except Exception as e:
                    fails = 0 if self.done > gained else fails + 1  # progress was made: a fresh budget
                    await TaskManager.sleep(_retry_in(self, e, fails, end))  # or raises: no more tries
        except Exception as e:
            if admitted is None:
                raise
            return _failed(self, e)
        finally:
            if admitted is not None:
                _exit(self, admitted)

    def _begin(self):
        # Set up the sinks once, before the first attempt -> the deadline (ticks) or None.
        if self.sha:
            import hashlib

            self.hash = hashlib.sha256()
        if self.mode == "file":
            self._open_file()
        t0 = ticks_ms()
        if self.speed_cb is not None:
            self.speed_t, self.speed_n = t0, 0
        return None if self.deadline is None else ticks_add(t0, int(self.deadline * 1000))

    def _request(self, sess, end):
        # -> this attempt's GET: our headers, a Range from where we stopped, the timeouts. Built in a plain
        # function: a coroutine frame keeps what its expressions left in its stack slots (the headers, the
        # timeouts) alive until later code overwrites them, here for as long as the body streams.
        import aiohttp

        if sess.closed:
            raise NetworkError("the session was closed (close_session) during the download", retry=False)
        if self.coded and self.done:
            # A content-coded body can't be resumed: Range counts encoded bytes, self.done decoded ones.
            if self.mode == "stream":
                raise NetworkError("coded body cut short after %d bytes were handed out" % self.done, retry=False)
            self._restart()
        pos = self.lo + self.have + self.done
        h = self._request_headers()
        if pos or self.hi is not None:
            h["Range"] = "bytes=%d-%s" % (pos, "" if self.hi is None else self.hi)
            if self.validator and (self.have or self.done):
                h["If-Range"] = self.validator
        total = None
        if end is not None:
            total = ticks_diff(end, ticks_ms()) / 1000
            if total <= 0:
                raise DownloadTimeout("deadline reached")
        return sess.get(self.url, headers=h, ssl=_context(),
                        timeout=aiohttp.ClientTimeout(total=total, connect=self.timeout, sock_read=self.timeout))

    def _accept(self, resp):
        # A response's status and headers, checked before a byte of its body is taken -> the bytes to read (None:
        # until the end; self.capped: a cap we chose, not a length the server announced), self.skip of them to
        # drop before the wanted ones. Nothing to read when the partial file is already the whole resource.
        pos = self.lo + self.have + self.done  # as asked for in _request: nothing arrived in between
        st = resp.status
        hd = resp.headers
        skip = 0
        if self.capped:
            self.capped = False
        if st == 206:
            body = self._partial(hd, pos)
        elif 200 <= st < 300:
            if pos:
                # Range ignored (or If-Range says the resource changed): start over from byte 0
                self._restart()
                skip = self.lo
            body = resp.content_length
            # Content-Length counts encoded bytes, readinto() hands out decoded ones: with a content coding
            # the decoded length is unknown (taking it as the limit cut gzip bodies short and called that
            # success). The client still fails a coded body that does not end.
            if any(t != "identity" for t in hd.tokens("Content-Encoding")):
                body, self.coded = None, True
            elif st == 200 and body is not None:
                self.size = body
            if self.hi is not None and (body is None or body > self.hi + 1):
                if body is None:  # hi + 1 is our cap, not the server's promise: the body may end before it
                    self.capped = True
                body = self.hi + 1
        elif st == 416 and self.have and not self.done:
            if hd.get("Content-Range", "").endswith("/%d" % self.have):
                return 0  # the partial file is already the whole resource: nothing to read
            raise HTTPError("HTTP 416 (range not satisfiable)", st)
        else:
            after = None
            ra = hd.get("Retry-After")
            if ra and ra.strip().isdigit():
                after = int(ra)
            raise HTTPError("HTTP %d %s" % (st, resp.reason), st, retry=st in _TRANSIENT, after=after)
        if self.validator is None:
            v = hd.get("ETag") or hd.get("Last-Modified")
            if v is not None:  # an attribute set is a slot in this job's table: only when there is one
                self.validator = v
        if self.max_size is not None and body is not None and self.have + self.done + body - skip > self.max_size:
            raise DownloadError("body of %d bytes exceeds max_size=%d" % (body, self.max_size))
        if self.mode == "memory" and body is not None:
            self._mem_room(self.done + body - skip, self.done)
        elif self.outfile is not None:
            self._note_part()
        if skip != self.skip:
            self.skip = skip
        return body

    def _partial(self, hd, pos):
        # A 206 answer -> the bytes to read. Its Content-Range must start where we asked, and it must be of the
        # resource we have the rest of: another validator or total means the resource changed (a server that
        # ignores If-Range sends the new one's bytes), so start over.
        cr = _content_range(hd.get("Content-Range"))
        if not pos and self.hi is None:  # we asked for no range: only the whole resource is an answer
            if cr is None or cr[0] or cr[2] is None or cr[1] != cr[2] - 1:
                raise HTTPError("206 to a request for the whole resource: %s" % hd.get("Content-Range"), 206)
        if cr is None or cr[0] != pos:
            # not the bytes we asked for: start over (stream mode can't take chunks back)
            self._restart()
            raise NetworkError("206 with a Content-Range not starting at %d: %s" % (pos, hd.get("Content-Range")))
        v = hd.get("ETag") or hd.get("Last-Modified")
        if (v is not None and self.validator is not None and v != self.validator
                or cr[2] is not None and self.size is not None and cr[2] != self.size):
            self._restart()
            raise NetworkError("the resource changed during the download (now %s, %s bytes)" % (v, cr[2]))
        if cr[2] is not None:
            self.size = cr[2]
        if self.hi is not None and cr[1] > self.hi:
            return self.hi - pos + 1  # more than asked for: take only the range (a segment's neighbour)
        return cr[1] - cr[0] + 1

    def _missing(self):
        # Bytes of the wanted range that complete answers left out (a 206 shorter than asked); 0 when the size is
        # unknown: then what the server framed is all there is.
        if self.size is None or self.coded:
            return 0
        end = self.size if self.hi is None else min(self.hi + 1, self.size)
        return end - (self.lo + self.have + self.done)

    def _store(self, data, end):
        # Memory mode: data becomes bytes [end - len(data), end) of the result. The buffer is made on the first
        # chunk when the length is unknown (chunked or close-delimited body) and doubles as needed.
        have = 0 if self.mem is None else len(self.mem)
        if have < end:
            self._mem_room(max(2 * have, end, 4096), end - len(data))
        self.mem[end - len(data) : end] = data

    def _due(self):
        # Cheap check per chunk; the coroutine _report() is only created when a callback is really due.
        if self.progress_cb is not None and self._pct() > self.pct:
            return True
        return self.speed_cb is not None and ticks_diff(ticks_ms(), self.speed_t) >= _SPEED_MS

    def _pct(self):
        total = self.user_total or self.size or _ASSUMED_SIZE
        if self.user_total is None and self.size is not None and self.lo:
            total = (self.size if self.hi is None else self.hi + 1) - self.lo
        # 100 is said once, at the very end; an unknown or wrong size never overshoots
        return min((self.have + self.done) * 100 // max(total, 1), 99)

    async def _report(self):
        if self.progress_cb is not None:
            pct = self._pct()
            if pct > self.pct:
                self.pct = pct
                await _call(self.progress_cb, pct)
        if self.speed_cb is not None:
            now = ticks_ms()
            dt = ticks_diff(now, self.speed_t)
            if dt >= _SPEED_MS:
                self.speed = (self.done - self.speed_n) * 1000 // dt
                self.speed_t, self.speed_n = now, self.done
                await _call(self.speed_cb, self.speed)

    async def _finish(self):
        missing = self._missing()
        if missing > 0:  # (the next attempt asks for the rest)
            raise NetworkError("the answer ended %d bytes before the end of what was asked for" % missing)
        if self.hash is not None:
            import binascii

            got = binascii.hexlify(self.hash.digest()).decode()
            if got != self.sha.lower():
                if self.f is not None:
                    self.f.close()
                    self.f = None
                    _remove(self.outfile + ".part")  # wrong bytes are no base for a resume
                raise IntegrityError("sha256 mismatch: got %s" % got)
        if self.progress_cb is not None:  # before OUTFILE is replaced: the callback may still stop the download
            self.pct = 100
            await _call(self.progress_cb, 100)
        if self.f is not None:
            try:
                self.f.close()
                self.f = None
                _replace(self.outfile + ".part", self.outfile)
                _remove(self.outfile + ".part.state")
            except OSError as e:
                raise LocalFileError("cannot finish %s: %s" % (self.outfile, e))
        self.state = "done"
        if self.mode == "memory":
            m, self.mem = self.mem, None
            if m is None:
                return b""
            return bytes(m) if len(m) == self.done else bytes(memoryview(m)[: self.done])
        return True

    def close(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
            # A failure before the first byte (a 404, say) leaves no empty .part behind: it would hide OUTFILE
            # from get_resume_position(). A partial with data stays for a resume.
            if not self.have and _size(self.outfile + ".part") == 0:
                _remove(self.outfile + ".part")
                _remove(self.outfile + ".part.state")
        self.mem = None


def _heap_holds(n):
    import gc

    if n <= gc.mem_free():
        return True
    gc.collect()
    return n <= gc.mem_free()


def _remove(path):
    import os

    try:
        os.remove(path)
    except OSError:
        pass


def _replace(src, dst):
    import os

    try:
        os.rename(src, dst)
    except OSError:  # some filesystems (FAT) won't rename over an existing file
        _remove(dst)
        os.rename(src, dst)


# --- the public API -----------------------------------------------------------------------------------------


def _check(url, outfile, total_size, progress_callback, chunk_callback, headers, opts):
    # Programmer errors are raised before any network traffic.
    if outfile is not None and chunk_callback is not None:
        raise ValueError("use either outfile (save to a file) or chunk_callback (stream), not both")
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty str, got %r" % (url,))
    if not (url[:7].lower() == "http://" or url[:8].lower() == "https://"):
        raise ValueError("url must start with http:// or https://: %r" % url)
    if outfile is not None and (not isinstance(outfile, str) or not outfile):
        raise ValueError("outfile must be a non-empty str path")
    for name, v in (("total_size", total_size), ("max_size", opts.get("max_size")),
                    ("chunk_size", opts.get("chunk_size"))):
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError("%s must be an int, got %r" % (name, v))
            if v < 0 or (v == 0 and name == "chunk_size"):
                raise ValueError("%s must be positive, got %d" % (name, v))
    for name, cb in (("progress_callback", progress_callback), ("chunk_callback", chunk_callback),
                     ("speed_callback", opts.get("speed_callback"))):
        if cb is not None and not callable(cb):
            raise TypeError("%s must be callable, got %r" % (name, cb))
    if headers is not None and not hasattr(headers, "items"):
        raise TypeError("headers must be a dict")
    sha = opts.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ValueError("sha256 must be 64 hex characters")
    seg = opts.get("segments")
    if seg is not None:
        if not isinstance(seg, int) or isinstance(seg, bool) or seg < 1:
            raise ValueError("segments must be an int >= 1, got %r" % (seg,))
        if outfile is None:
            raise ValueError("segments= needs file mode (outfile=)")
    try:
        import aiohttp
    except ImportError:
        return
    aiohttp.split_url(url)  # malformed URL, bad port: InvalidURL (a ValueError) naming the problem
    aiohttp.check_headers(headers)  # CR/LF/NUL: ValueError


def _sync_or_async(coro):
    # From synchronous code or the REPL (no event loop running) the download runs to completion and the
    # result is returned; under a running loop the coroutine is returned for the caller to await.
    from asyncio import core

    if core.cur_task is not None:
        return coro
    r = asyncio.run(coro)
    if not _refs:
        _drop_session()  # no loop will run the idle timer: close now rather than leave sockets open
    return r


def download_url(url, outfile=None, total_size=None, progress_callback=None, chunk_callback=None,
                 headers=None, **opts):
    """Download url to memory (-> bytes|None), to outfile (-> True|False) or to chunk_callback (-> True|False).

    Keywords beyond the documented ones (all optional): chunk_size=1024, sha256="hex", max_size=int,
    deadline=seconds, timeout=seconds (per read, default 10), tries=3, raise_errors=False, redact_url=False,
    speed_callback=f, priority=0, segments=1 (file mode: up to N ranged connections, see segments.py).
    """
    opts["progress_callback"] = progress_callback
    _check(url, outfile, total_size, progress_callback, chunk_callback, headers, opts)
    cls = _Job
    if (opts.get("segments") or 1) > 1:
        from .segments import Segmented as cls  # only then: on the device every module costs heap
    job = cls(url, outfile, chunk_callback, total_size, headers, opts)
    return _sync_or_async(job.run())


# What _Job.run does before and after a whole download, as plain functions: their locals would otherwise be slots
# in every download's coroutine frame.
def _enter(job):
    sess = _acquire()
    if sess is None:
        job.log("cannot start: aiohttp is not available")
    else:
        _jobs.append(job)
    return sess


def _exit(job, admitted):
    if admitted:
        _leave()
    job.close()  # also on cancellation: the partial file stays for a resume
    _jobs.remove(job)
    _release()


def _failed(job, e):
    # -> the documented failure value, or raises: a DownloadError with raise_errors, an app callback's exception
    # always (as it raised it), anything else as it is (a defect is never hidden behind None/False)
    job.state = "failed"
    if isinstance(e, _CallbackError):
        job.log("stopped by its callback: %r" % (e.error,))
        raise e.error
    if isinstance(e, MemoryError):
        e = OutOfMemory("out of memory")
    if not isinstance(e, DownloadError):
        job.log("failed: %r" % (e,))
        raise e
    if isinstance(e, OutOfMemory):
        _reclaim(job)
    job.log("failed (%s): %s" % (e.reason, e))
    if job.raise_errors:
        raise e
    return job.fail


def _reclaim(job):
    # After running out of memory, give the heap back now, from a shallow frame: the collector scans the C stack
    # conservatively, and a stale word left there by the failed deep call chain could keep the buffer that did
    # not fit alive through the next download's collections (seen at -X heapsize=96k: the next 2 KB download
    # failed too).
    import gc

    job.close()
    gc.collect()


def downloads():
    """Downloads queued or in flight: [{url, state, done, total, speed}] (url redacted if asked)."""
    return [
        {"url": j.shown, "state": j.state, "done": j.have + j.done,
         "total": j.user_total or j.size, "speed": j.speed}
        for j in _jobs
    ]


async def _post(url, data, headers, redact):
    shown = _redact(url) if redact else url
    sess = _acquire()
    if sess is None:
        _log("aiohttp is not available, cannot post to %s" % shown)
        return None
    try:
        async with sess.post(url, data=data, headers=_with_user_agent(dict(headers or {})), ssl=_context()) as resp:
            body = await resp.read()
            if 200 <= resp.status < 300:
                return body
            _log("post to %s failed: HTTP %d" % (shown, resp.status))
    except Exception as e:
        line = "post to %s failed: %r" % (url, e)
        _log(_redact(line) if redact else line)
    finally:
        _release()
    return None


def post_url(url, data=None, headers=None, redact_url=False):
    """POST data (bytes, str or dict as form fields) and return the response body, or None on failure.
    redact_url=True: logs show only scheme://host/… (the path and query may carry keys)."""
    _check(url, None, None, None, None, headers, {})
    return _sync_or_async(_post(url, data, headers, redact_url))


class DownloadManager:
    """MicroPythonOS's download service (`from mpos import DownloadManager`): a module-level singleton, as the
    other managers are. Its tunables are its attributes; set them on the class."""

    session_idle_ms = 2000  # keep the idle session (and its pooled connections) this long; 0 = close at once
    max_connections = 3  # downloads in flight at once; the rest wait, highest priority first
    user_agent = None  # default "MicroPythonOS/<version>"; a caller's User-Agent header always wins
    ca = None  # a CA (DER bytes, PEM text or a file path): when set, servers must present a certificate it signed
    max_reconnects = 10  # new requests one download may make after failures, whatever it gained in between
    retry_base_ms = 250  # the first retry waits about this long, each further one twice as long (with jitter)
    retry_max_ms = 10000  # no wait between tries is longer, a server's Retry-After included (an app is waiting)

    download_url = staticmethod(download_url)
    post_url = staticmethod(post_url)
    downloads = staticmethod(downloads)
    is_network_error = staticmethod(is_network_error)
    get_resume_position = staticmethod(get_resume_position)
    is_session_active = staticmethod(is_session_active)
    close_session = staticmethod(close_session)

    DownloadError = DownloadError
    HTTPError = HTTPError
    NetworkError = NetworkError
    DownloadTimeout = DownloadTimeout
    IntegrityError = IntegrityError
    LocalFileError = LocalFileError
    OutOfMemory = OutOfMemory
    TLSError = TLSError
