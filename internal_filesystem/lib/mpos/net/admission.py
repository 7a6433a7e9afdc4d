# What a download takes before it runs and gives back when it ends: the shared aiohttp session, a connection slot
# and its place in downloads(); and what downloads share besides: the session's TLS context and each thread's read
# buffer. Used through its functions only.
#
# The session is made on first use and closed once idle_ms passed without a user. At most `limit` slots
# (DownloadManager.max_connections, which callers pass in) are taken at once, but for downloads nested in a
# callback of one that holds a slot (see admit); the other downloads wait, highest priority first, in arrival order
# within a priority. State that threads share is guarded by a _thread lock (apps may call from threads), never held
# across an await.

from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

_LONGEST_MS = const(0x0FFFFFFF)  # aiohttp.client's: the longest wait a 32-bit port's ticks time (about 3.1 days)

try:
    import _thread

    _lock = _thread.allocate_lock()
except ImportError:  # a port without threads
    _thread = None

    class _NoLock:
        def __enter__(self):
            pass

        def __exit__(self, *exc_info):
            pass

    _lock = _NoLock()

_session = None
_users = 0  # downloads and posts holding the session
_closer = None  # the task that closes the idle session at _close_at (see _close_when_idle)
_close_at = 0  # ticks_ms when the idle session closes, unless a user comes first
_tls = None  # (the `ca` it was made for, its SSLContext, the CA file's _file_stamp): see tls_context
_buffers = {}  # thread id -> (read buffer, its memoryview), shared by that thread's downloads (see read_buffer)
_listed = []  # downloads queued or in flight, in arrival order
_waiting = []  # (priority, Event set when its slot is granted) of each download waiting, in the order of service
_in_use = 0  # connection slots taken
_holders = []  # the task of each slot admit() gave (a task holds several while downloads nest in callbacks)
_resting = []  # the tasks of downloads waiting before their next try (see rest)


def acquire_session(download=None):
    # -> the shared session for one more user, who gives it back with release_session(), or None without aiohttp.
    # A download is listed in downloads() until then; one that would write a file a listed download writes (its
    # outfile, .part or .state) raises LocalFileError instead (two writers of one .part would mix their bytes, and
    # the second to finish lose the file).
    global _users
    with _lock:
        if _listed and download is not None and download.outfile is not None:
            from . import errors, partfile  # (loaded with download.py: named here, not one more entry in these globals)

            path = partfile.canonical(download.outfile)
            for other in _listed:
                if other.outfile is not None and partfile.share_a_file(path, partfile.canonical(other.outfile)):
                    raise errors.LocalFileError("%s: another download writes it, or its .part" % download.outfile)
        if _shared_session() is None:
            return None
        if download is not None:
            _listed.append(download)  # (before the count: a heap too full for the list's growth counts nothing)
        _users += 1
    return _session


def release_session(idle_ms, download=None):
    # One user less; the last one leaves the session open idle_ms more for the next download (0: closes it now)
    global _session, _users, _closer, _close_at
    stale = None  # a closer that must not close this session
    with _lock:
        if download is not None:
            _listed.remove(download)
        _users -= 1
        if not _users:
            _buffers.clear()
        if _users or _session is None:
            return
        idle = _session
        close_now = idle_ms <= 0
        if close_now:
            _session = None
            stale, _closer = _closer, None
        else:
            close_at = ticks_add(ticks_ms(), int(min(idle_ms, _LONGEST_MS)))  # (an app's sys.maxsize, a float)
            if _closer is not None and (_closer.done() or ticks_diff(close_at, _close_at) < 0):
                # ended (cancelled by an app, a full heap), or asleep until a later close (idle_ms was made shorter)
                stale, _closer = _closer, None
            _close_at = close_at
            closer = _closer
    if stale is not None:
        _cancel(stale)
    if close_now:
        try:
            idle.shutdown()
        except MemoryError:  # (its sockets and its watchdog went first: the rest is the state of a session no one holds)
            pass
        return
    if closer is not None:  # the closer of the downloads before this one sleeps on, until the new _close_at
        return
    # Made outside the lock: a create_task that runs the coroutine's first step at once must not find it held
    try:
        from .. import TaskManager  # (loaded now if no one named it yet)

        closer = TaskManager.create_task(_close_when_idle(idle))
    except MemoryError:  # a download that ends in a full heap still ends as it would have: the session closes now
        closer = None
    if closer is None:  # (or TaskManager is disabled: nothing would close it later)
        close_session_now()
        return
    with _lock:
        if _session is idle and _closer is None:
            _closer, closer = closer, None
    if closer is not None:  # the session went (or another closer came) meanwhile
        _cancel(closer)


async def _close_when_idle(idle):
    # Closes the session once no user held it until _close_at. One task serves the downloads that follow each other
    # within the idle window: it sleeps until _close_at, and on while a user's release moved it later. It never
    # waits on a user: a sleep that returns at once (a test's TaskManager) would turn that wait into a busy loop.
    global _session, _closer
    from .. import TaskManager

    until = None  # the _close_at it slept until
    try:
        while True:
            with _lock:
                if _session is not idle:  # closed by close_session(), which also took _closer
                    return
                if _users and until is not None:  # woke in use: the last user makes the next closer (release_session)
                    _closer = None
                    return
                if _close_at == until:
                    _session = None
                    _closer = None
                    break
                until = _close_at
                wait = ticks_diff(until, ticks_ms())
            await TaskManager.sleep_ms(wait if wait > 0 else 0)
    except BaseException:
        # An interrupt (Ctrl-C) that ends this task early: named in _closer, it would keep any other closer from
        # being made, and the session with its connections would stay for ever. It closes now, unless in use (its
        # last user makes a closer). (A cancel took _closer first.)
        import asyncio

        with _lock:
            if _closer is not asyncio.current_task():
                raise
            _closer = None
            if _users:
                raise
            _session = None
        idle.shutdown()
        raise
    idle.shutdown()


def _cancel(task):
    task.cancel()
    # A task cancelled before it first ran never reaches TaskManager's cleanup: it goes from task_list now (with the
    # session its frame holds), not at the next create_task
    from .. import TaskManager

    try:
        TaskManager.task_list.remove(task)
    except ValueError:  # not listed (it ended), or forgotten meanwhile by a create_task a scheduled callback made
        pass


def is_session_active():
    """True while the shared session exists (during downloads and its short idle window)."""
    # One read, without _lock: a callback micropython.schedule runs while its thread holds it must not wait for it
    return _session is not None


def close_session_now():
    # The session and every connection, now, whoever holds it; a download waiting to retry tries at once (and
    # finds the session closed)
    global _session, _closer
    with _lock:
        idle, _session = _session, None
        closer, _closer = _closer, None
    if closer is not None:
        _cancel(closer)
    if idle is not None:
        idle.shutdown()
        import asyncio
        from aiohttp import poll

        if poll.internals:  # (elsewhere a wait can't be ended but by a cancel, which the caller would get)
            for task in _resting:
                poll.interrupt(task, asyncio.CancelledError(rest))


async def rest(seconds):
    # A download's wait before its next try, which close_session_now() ends early
    import asyncio
    from .. import TaskManager

    me = asyncio.current_task()
    _resting.append(me)
    try:
        await TaskManager.sleep(seconds)
    except asyncio.CancelledError as e:
        if not (e.args and e.args[0] is rest):  # a cancel, not close_session_now()
            raise
    finally:
        _resting.remove(me)


def tls_context(ca):
    # The TLS context for a request: None (the session's own, unverified, as on MicroPythonOS today, whose devices
    # carry no CA bundle) while ca is None, else one that verifies against ca, made once per value and again when
    # the file it names changes. The session pools connections per context, so one made under another ca never
    # serves this request.
    global _tls
    if ca is None:
        return None
    made = _tls
    stamp = _file_stamp(ca)
    if made is None or made[0] is not ca or made[2] != stamp:
        import aiohttp

        try:
            made = _tls = (ca, aiohttp.tls_context(ca), stamp)
        except (OSError, ValueError) as e:  # no such file, or no certificate in it: no try can mend that
            from . import errors

            raise errors.TLSError("DownloadManager.ca can't be loaded: %r" % (e,))
    return made[1]


def _file_stamp(ca):
    # -> (size, time) of the CA file ca names, None for a CA given as a certificate (or no file there). A file
    # rewritten with the same size within the same second passes for the one before.
    if isinstance(ca, str) and "-----BEGIN" not in ca:  # (a path: aiohttp.tls_context's own test)
        import os

        try:
            stat = os.stat(ca)
        except OSError:
            return None
        return stat[6], stat[8]
    return None


def read_buffer(size):
    # -> (buffer, its memoryview) that this thread's downloads share: a download hands its bytes on before it awaits
    # anything, and the client writes into the buffer only when back from its wait, so no two downloads ever have
    # bytes in it at once. Let go with the session's last user.
    me = _thread.get_ident() if _thread else 0
    with _lock:
        shared = _buffers.get(me)
        if shared is None or len(shared[0]) != size:
            from aiohttp.response import fitting_bytearray  # (loaded: a download is running)

            buf = fitting_bytearray(size)
            shared = _buffers[me] = (buf, memoryview(buf))
    return shared


# -- connection slots ----------------------------------------------------------------------------------------------


async def admit(priority, limit, end, sess):
    # Returns once the running task holds one more slot -> the session to send its requests on: sess, or the one of
    # now if close_session() closed sess while the download waited (it had sent nothing: it starts as a download
    # called after close_session() would). Raises (cancellation, DownloadTimeout at `end`, a ticks_ms) holding none.
    # A download awaited in a callback of one that holds a slot in this task gets one at once, past the cap: its
    # parent waits for it, so it would wait for ever for its parent's slot.
    global _in_use
    import asyncio

    me = asyncio.current_task()
    if _in_use < max(limit, 1) and not _waiting or me in _holders:  # (a cap below one is one: none would start)
        _holders.append(me)  # before the slot is counted: in a full heap it fails holding none
        _in_use += 1
        return sess
    granted = asyncio.Event()
    place = 0
    while place < len(_waiting) and _waiting[place][0] >= priority:  # behind all of its priority and higher ones
        place += 1
    entry = (priority, granted)
    _waiting.insert(place, entry)
    # At `end` a timer takes the entry out and marks it expired (asyncio.wait_for would turn a cancel that comes as
    # the time runs out into a TimeoutError)
    expired = []
    timer = None
    if end is not None:

        async def expire(entry, end, expired):  # (only names of its own: none of admit's becomes a cell)
            from asyncio import sleep_ms

            try:
                await sleep_ms(ticks_diff(end, ticks_ms()))
            finally:  # (an interrupt, Ctrl-C, as the time ran out too: the deadline holds; a cancel comes after admit)
                if entry in _waiting:
                    _waiting.remove(entry)
                    expired.append(entry)
                    entry[1].set()

        timer = asyncio.create_task(expire(entry, end, expired))
    try:
        await granted.wait()
        if expired:
            from . import errors

            raise errors.DownloadTimeout("deadline reached while waiting for a connection slot")
        with _lock:  # (before the slot is noted: a full heap passes it on, below)
            sess = _shared_session()  # made anew if close_session() closed the one held while it waited
        _holders.append(me)
    except BaseException:
        if not expired:  # (an expired entry holds nothing)
            if granted.is_set():  # granted a slot while being cancelled, or with no heap to note it: pass it on
                leave(limit)
            else:
                _waiting.remove(entry)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return sess


def _shared_session():
    # -> the shared session, made if there is none (the caller holds _lock); None without aiohttp
    global _session
    if _session is None:
        try:
            import aiohttp
        except ImportError:
            return None
        _session = aiohttp.ClientSession()
    return _session


def leave(limit, own=False):
    # Gives a slot back (own: the one admit() gave the running task): it passes straight to the best waiting
    # download while the cap allows, and so do the slots a cap raised since then adds
    global _in_use
    if own:
        import asyncio

        _holders.remove(asyncio.current_task())
    _in_use -= 1
    while _waiting and _in_use < max(limit, 1):
        _in_use += 1
        _waiting.pop(0)[1].set()


def free(limit):
    # Slots a download that holds one may take besides: those free right now, none while another waits
    return 0 if _waiting else max(0, limit - _in_use)


def take_free(wanted, limit):
    # Up to `wanted` of the free slots -> how many were taken (none for a count below one); each goes back with leave()
    global _in_use
    taken = max(0, min(wanted, free(limit)))
    _in_use += taken
    return taken


def listed():
    return _listed
