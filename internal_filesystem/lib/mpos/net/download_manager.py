# DownloadManager: MicroPythonOS's shared HTTP download service, a module-level singleton.
#
#   data = await DownloadManager.download_url(url)                    # memory mode -> bytes or None
#   ok = await DownloadManager.download_url(url, outfile="/sd/a.mpk") # file mode   -> True/False
#   ok = await DownloadManager.download_url(url, chunk_callback=cb)   # stream mode -> True/False
#
# What it guarantees beyond the documented contract:
# - File mode writes OUTFILE.part and renames it over OUTFILE only after a complete (and, with sha256=, verified)
#   body, so a failed download never leaves a broken file where a good one was.
# - A dropped or stalled connection is resumed with Range (+ If-Range) from the byte where it stopped; the answer is
#   checked (206 + matching Content-Range) before a single byte is appended.
# - Transient HTTP/network failures are retried with exponential backoff and jitter, within a small budget.
# - Failures return None/False as documented; raise_errors=True raises a DownloadError subclass instead.
#
# This module is the public API: the arguments' checks, the choice between running at once and returning a
# coroutine, and the tunables. One download is download.py's; no module below this one imports it.
import asyncio
import gc
import sys

from .._loading import one_at_a_time
from .._log import redact, warning
from . import admission, errors, partfile

try:
    import _thread

    _running_lock = _thread.allocate_lock()  # held while a synchronous call runs asyncio's loop (a moment by any call)
except ImportError:  # a port without threads: one call at a time runs the loop
    _thread = None
_running_thread = None  # the _thread ident of the thread that holds _running_lock, while it holds it


async def close_session():
    """Close the shared session and every connection now. Rarely needed: sessions close when idle."""
    admission.close_session_now()
    await asyncio.sleep(0)


def downloads():
    """Downloads queued or in flight: [{url, state, done, total, speed}] (url redacted if asked). total: the bytes
    done reaches at the end (of a caller's closed Range, the range's), None while unknown."""
    listed = admission.listed()
    if not listed:
        return []
    states = "queued connecting downloading done failed".split()  # (download.py's states, in their order)
    return [
        {"url": redact(d.url) if d.redact_url else d.url, "state": states[d.state],
         "done": d.done(), "total": d.expected_size(), "speed": d.speed}
        for d in listed
    ]


def _check(url, outfile, total_size, progress_callback, chunk_callback, headers, options):
    # Programmer errors are raised before any network traffic
    for name in options:  # (a misspelt keyword would be ignored, and the download done without it)
        if name not in ("progress_callback", "speed_callback", "chunk_size", "sha256", "max_size", "raise_errors",
                        "deadline", "priority", "tries", "timeout", "redact_url", "segments"):
            raise TypeError("unexpected keyword argument %r" % name)
    if outfile is not None and chunk_callback is not None:
        raise ValueError("use either outfile (save to a file) or chunk_callback (stream), not both")
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty str, got %r" % (url,))
    if not (url[:7].lower() == "http://" or url[:8].lower() == "https://"):
        raise ValueError("url must start with http:// or https://: %r" % url)
    if outfile is not None and (not isinstance(outfile, str) or not outfile):
        raise ValueError("outfile must be a non-empty str path")
    for name, value in (("total_size", total_size), ("max_size", options.get("max_size")),
                        ("chunk_size", options.get("chunk_size"))):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError("%s must be an int, got %r" % (name, value))
            if value < 0 or (value == 0 and name == "chunk_size"):
                raise ValueError("%s must be positive, got %d" % (name, value))
    for name in ("tries", "timeout", "deadline", "priority"):  # (else a str would fail once the request went out)
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError("%s must be a number, got %r" % (name, value))
    for name, callback in (("progress_callback", progress_callback), ("chunk_callback", chunk_callback),
                           ("speed_callback", options.get("speed_callback"))):
        if callback is not None and not callable(callback):
            raise TypeError("%s must be callable, got %r" % (name, callback))
    if headers is not None and not hasattr(headers, "items"):
        raise TypeError("headers must be a dict")
    sha256 = options.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64):
        raise ValueError("sha256 must be 64 hex characters")
    segments = options.get("segments")
    if segments is not None:
        if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
            raise ValueError("segments must be an int >= 1, got %r" % (segments,))
        if outfile is None:
            raise ValueError("segments= needs file mode (outfile=)")
    try:
        import aiohttp
    except ImportError:
        return
    aiohttp.split_url(url)  # malformed URL, bad port: InvalidURL (a ValueError) naming the problem
    aiohttp.check_headers(headers, None)  # CR/LF/NUL: ValueError


def _sync_or_async(coro):
    # From synchronous code or the REPL (no event loop running) the download runs to completion and the result is
    # returned; under a running loop the coroutine is returned for the caller to await. From a thread beside
    # TaskManager's loop, that loop runs it while the thread waits for its result (asyncio is the loop thread's).
    # asyncio's loop state is one per process: a thread's synchronous call waits while another thread's runs it (two
    # threads running one queue would run each other's tasks), then runs its own; TaskManager.start() waits for it
    # too, having named its thread first, so a call that gets the lock after that is handed to start()'s loop.
    # coro None asks only whether a coroutine would run here, on a loop of its own (see _runs_here).
    global _running_thread
    from asyncio import core

    me = None if _thread is None else _thread.get_ident()
    if me is not None:
        if _running_thread == me:  # a callback in this thread's loop, or one scheduled while it holds the lock
            return coro
        _running_lock.acquire()
        _running_thread = me  # (no bytecode between them lets a scheduled callback run)
    try:
        loop = _loop_thread()
        if loop is None or loop == me:
            if core.cur_task is not None:  # (this thread's loop, or an app's asyncio.run in another: one can't tell)
                return coro
            if coro is None:
                return True
            try:
                try:
                    run = _module("synchronous").run  # asyncio.run, and the cleanup after an interrupt
                except OSError:  # no descriptor to read it (run from files): the call runs without that
                    run = asyncio.run  # (no heap for it: the MemoryError goes on, as none for the loop would)
                return run(coro)
            finally:
                core.cur_task = None  # an interrupt that left the loop left its task named there: no loop runs now
    finally:
        if me is not None:
            _running_thread = None
            _running_lock.release()
    if coro is None:
        return False
    return sys.modules["mpos.task_manager"].TaskManager.run_from_thread(coro)  # (outside the lock: start() may wait)


def _loop_thread():
    # -> the thread whose TaskManager.start() runs the loop (named before start() waits for _running_lock), or None
    task_manager = sys.modules.get("mpos.task_manager")  # (not loaded: no start() runs)
    if task_manager is not None:
        try:
            return task_manager.TaskManager.loop_thread()
        except (AttributeError, MemoryError):  # a module its import left half made (a full heap): it runs no loop
            pass
    return None


def _runs_here():
    # -> whether _sync_or_async would run the call's coroutine on a loop of its own, in this thread (synchronous
    # code, no TaskManager loop in another thread), a loop that ends with the call (TaskManager, whose task would
    # close an idle session later, is not loaded for it). Another thread's synchronous call is waited for.
    return bool(_sync_or_async(None))


def download_url(url, outfile=None, total_size=None, progress_callback=None, chunk_callback=None, headers=None,
                 **options):
    """Download url to memory (-> bytes|None), to outfile (-> True|False) or to chunk_callback (-> True|False).

    Keywords beyond the documented ones (all optional): chunk_size=1024, sha256="hex", max_size=int,
    deadline=seconds, timeout=seconds (per read, default 10), tries=3, raise_errors=False, redact_url=False,
    speed_callback=f, priority=0, segments=1 (file mode: up to N ranged connections, see segments.py).
    """
    options["progress_callback"] = progress_callback
    try:
        _check(url, outfile, total_size, progress_callback, chunk_callback, headers, options)
        kind = _download_class((options.get("segments") or 1) > 1)
        download = kind(url, outfile, chunk_callback, total_size, headers, options)
        if _runs_here():  # no loop is left to close an idle session: the last user closes it at once
            download.linger = False
        download = download.run()  # now its coroutine (made here: its frame is the largest; no new local, design.md)
    except (MemoryError, OSError) as e:
        # The first download loads the client and download.py: a full heap fails it as any other, and so does a
        # descriptor that can't be had to read their files (run from files, EMFILE: descriptors come back)
        failure = None if isinstance(e, MemoryError) else errors.NetworkError("cannot load the client: %s" % (e,))
        memory_mode = outfile is None and chunk_callback is None
        if _runs_here():  # (no coroutine, nor a loop, made for it: the heap may hold neither)
            return _cannot_start(url, memory_mode, options, failure)
        return _sync_or_async(_reporting(url, memory_mode, options, failure))
    try:
        return _sync_or_async(download)
    except MemoryError:  # no heap for the loop (or the thread's handover) to begin it, or to say why it ended
        return _cannot_start(url, outfile is None and chunk_callback is None, options, None)


async def _reporting(url, memory_mode, options, failure):
    return _cannot_start(url, memory_mode, options, failure)


def _cannot_start(url, memory_mode, options, failure):
    # -> the documented failure value (or failure, a DownloadError raised with raise_errors) of a download that
    # could not start; failure None: the heap ran out, OutOfMemory if there is room to make it, else MemoryError
    try:
        failure = failure or errors.OutOfMemory("out of memory")
        line = "download of %s failed (%s): %s" % (url, failure.reason, failure)
        line = redact(line) if options.get("redact_url") else line
    except MemoryError:  # no room even for the line: the reason goes out without the URL
        line = ("a download failed (memory): out of memory" if failure is None or failure.reason == "memory"
                else "a download failed (no heap left to say more)")
    warning("DownloadManager", line)
    if options.get("raise_errors"):
        raise failure or MemoryError
    return None if memory_mode else False


def _download_class(segmented):
    # The download classes load with the first download, not with DownloadManager (docs/performance.md). They read
    # the tunables an app sets on DownloadManager through this one reference, handed down from here: the modules
    # below never import this one.
    if "mpos.net.download" not in sys.modules:  # the client just loaded (_check named it): its import's garbage
        gc.collect()  # goes before download.py comes
    download = _module("download")
    if download.Download.tunables is None:  # the first download: what loading left goes before what it keeps
        gc.collect()
    download.Download.tunables = DownloadManager
    return _module("segments").Segmented if segmented else download.Download  # segments: only then, it costs heap


def _module(name):
    # -> mpos.net.<name>, imported by one thread at a time (see mpos/_loading.py)
    return one_at_a_time(__import__, name, globals(), None, True, 1)


async def _post(url, data, headers, redact_url, idle_ms):
    shown = redact(url) if redact_url else url
    try:
        sess = admission.acquire_session()
    except MemoryError:  # no heap for the session: nothing is taken
        warning("DownloadManager", "a post failed: out of memory")
        return None
    if sess is None:
        warning("DownloadManager", "aiohttp is not available, cannot post to %s" % shown)
        return None
    try:
        sent = DownloadManager._merge_headers(headers)  # (in the try: whatever fails, the session is given back)
        async with sess.post(url, data=data, headers=sent, ssl=admission.tls_context(DownloadManager.ca)) as resp:
            body = await resp.read()
            if 200 <= resp.status < 300:
                return body
            warning("DownloadManager", "post to %s failed: HTTP %d" % (shown, resp.status))
    except Exception as e:
        line = "post to %s failed: %r" % (url, e)
        warning("DownloadManager", redact(line) if redact_url else line)
    finally:
        admission.release_session(idle_ms)
    return None


def post_url(url, data=None, headers=None, redact_url=False):
    """POST data (bytes, str or dict as form fields) and return the response body, or None on failure.
    redact_url=True: logs show only scheme://host/… (the path and query may carry keys)."""
    try:
        _check(url, None, None, None, None, headers, {})
        idle_ms = 0 if _runs_here() else DownloadManager.session_idle_ms
        return _sync_or_async(_post(url, data, headers, redact_url, idle_ms))
    except MemoryError:  # (as download_url's) synchronous code gets the failure; a loop's task, the MemoryError
        if not _runs_here():
            raise
        warning("DownloadManager", "a post failed: out of memory")
    return None


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
    is_network_error = staticmethod(errors.is_network_error)
    get_resume_position = staticmethod(partfile.get_resume_position)
    is_session_active = staticmethod(admission.is_session_active)
    close_session = staticmethod(close_session)

    # (named through their modules: a name imported here would be one more entry in this module's globals)
    DownloadError = errors.DownloadError
    HTTPError = errors.HTTPError
    NetworkError = errors.NetworkError
    DownloadTimeout = errors.DownloadTimeout
    IntegrityError = errors.IntegrityError
    LocalFileError = errors.LocalFileError
    OutOfMemory = errors.OutOfMemory
    TLSError = errors.TLSError

    @staticmethod
    def _merge_headers(headers=None):
        # -> a new dict: the caller's headers, and our User-Agent unless they hold one (upstream's name, which
        # MicroPythonOS's test mocks call)
        return _module("download").with_user_agent(dict(headers or {}), DownloadManager.user_agent)


# What the imports above left behind (the import machinery's paths, the loader's buffers) is collected now, so the
# allocations that come next (aiohttp's and download.py's, on the first download) fill its holes instead of the
# heap's free end.
gc.collect()
