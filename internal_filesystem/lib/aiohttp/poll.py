# Where the client meets asyncio: waiting for a socket, and handing a ready result to the awaiting task.
#
# Two ways, chosen by what asyncio offers (tests run both: they set `internals = False`):
# - asyncio's internals, as MicroPython's own streams use them (extmod/asyncio/stream.py): a wait puts the socket in
#   the event loop's IOQueue and yields; a read whose result is ready hands the awaiting task a finished native
#   Task, which raises the result from C. Neither allocates, per wait or per read.
# - asyncio's public API only, for any other asyncio: a Stream waits and writes; results are raised from Python,
#   and a read that must wait goes through a generator of its own. (A Stream's wait that runs out of heap inside
#   select.poll is not mended there: see _mend.)
# A proposal for MicroPython's streams is in docs/design.md: a readinto() whose awaitable is reused would make the
# first way public.

import asyncio
import gc
import select
import sys

try:
    from asyncio import core
    from _asyncio import Task as _NativeTask
except ImportError:
    core = _NativeTask = None

internals = core is not None and hasattr(core, "_io_queue") and hasattr(core, "cur_task")
_NOTHING = bytearray(0)  # a read of nothing: what a Stream waits for before it reads
# (see _mend) Where select.poll keeps an array of fds (the unix port: no select.select), or where an address is no
# small int (32-bit unix, an ESP32-P4: then id() and the poller's own lookups allocate), a poller's half-made slot is
# mended with heap: a reserve, let go for it, made for the sockets polled at once when it was made, and then some.
_mend_needs_heap = not hasattr(select, "select") or id(_NOTHING) > sys.maxsize >> 1  # (past the small ints)
_reserve = None
_reserve_covers = 0 if _mend_needs_heap else 1 << 30  # sockets polled at once it has room for (any: none is needed)


def current_task():
    # the running task, or None outside one
    if internals:
        return core.cur_task
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def register(sock, write):
    # (internals) the running task waits in the poller for sock, once it yields None
    io = core._io_queue
    if not _reserve_covers and _key_of(io, sock) is None:  # a new entry begins only with a reserve to mend it
        _remake_reserve(len(io.map) + 1, True)
        if _reserve is None:
            raise MemoryError
    try:
        if write:
            io.queue_write(sock)
        else:
            io.queue_read(sock)
    except MemoryError as e:
        key = _key_of(io, sock)
        if key is not None:  # (only a new entry can run out of heap: a second waiter allocates none)
            _mend(io, sock, key)
        raise e
    if len(io.map) > _reserve_covers:
        _remake_reserve(len(io.map))


def _key_of(io, sock):
    # -> the key of sock's entry in asyncio's IOQueue, or None: its own key object, found without id() (which
    # allocates where an address is no small int: in a full heap, and 32 bytes of garbage a wait on 32-bit unix)
    for key in io.map:  # (a dict's iteration allocates nothing)
        if io.map[key][2] is sock:
            return key
    return None


def _mend(io, sock, key):
    # asyncio's IOQueue puts sock in its map, then in its select.poll: a MemoryError halfway through poll.register()
    # leaves the poller a slot with no object, which its next poll() dereferences and crashes the interpreter
    # (extmod/modselect.c: "This case is not handled"). unregister() takes the slot away, except where the poller
    # keeps an array of fds: there it dereferences the slot too, and a second register() must fill it first.
    global _reserve, _reserve_covers
    del io.map[key]
    if _mend_needs_heap:
        _reserve = None
        _reserve_covers = 0
        gc.collect()
        io.poller.register(sock)
    io.poller.unregister(sock)
    if _mend_needs_heap:  # at once, from what the mend let go: the next wait may run out of heap as well
        gc.collect()
        _remake_reserve(len(io.map))


def _remake_reserve(polled, may_collect=False):
    # A reserve for the poller's next entry (32 bytes), its fd array grown (8 bytes a socket, 4 more at a time) and
    # its table grown (16 bytes a slot, up to half as many again): a register() that ran out before its slot was
    # made must find room for all three in the mend, or it may make the half slot itself
    global _reserve, _reserve_covers
    collecting = not may_collect and gc.isenabled()
    if collecting:
        gc.disable()  # (or an allocation that fails collects first: on every wait while the heap is short)
    try:
        _reserve = bytearray(64 + 32 * (polled + 8))
        _reserve_covers = polled + 4
    except MemoryError:
        pass  # (the next wait tries again)
    finally:
        if collecting:
            gc.enable()


if _mend_needs_heap:
    _remake_reserve(4)  # (made at import, for 8 sockets: a wait makes it only when more are polled at once)


def readable(sock):
    # async: until sock has something to read, or has closed
    if internals:
        register(sock, False)
        yield
    else:
        yield from asyncio.StreamReader(sock).readinto(_NOTHING)


def write_all(sock, data):
    # async: all of data into sock, waiting whenever it takes no more (this also drives a connect and a TLS handshake)
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        n = sock.write(view[sent:])
        if n is not None:
            sent += n
        elif internals:
            register(sock, True)
            yield
        else:  # a Stream buffers the rest and waits until the socket takes it
            stream = asyncio.StreamWriter(sock, {})
            stream.write(bytes(view[sent:]))
            yield from stream.drain()
            return


def interrupt(task, error):
    # Ends a task's wait by raising error in it -> whether the task must take its CancelledError for error (without
    # internals: no other cancel can be told apart from this one). With internals another task's cancel wins: one
    # that came since the task last ran is left as it is, one that comes after this replaces error.
    if not internals:
        task.cancel()
        return True
    pending = task.data  # what it waits in, or what its next run raises
    if pending is not core.CancelledError and not isinstance(pending, BaseException):
        task.cancel()
        task.data = error
    return False


async def bounded(aw, timeout_ms):
    # asyncio.wait_for_ms(aw, timeout_ms), which runs aw in a task of its own: an interrupt (Ctrl-C) that lands in it
    # would end that task for good, and wait_for then waits for it for ever (past its time too). It is raised here,
    # over whatever else ended the wait (the cancel of a task woken as the interrupt dropped its connection).
    caught = []
    try:
        return await asyncio.wait_for_ms(_catching(aw, caught), timeout_ms)
    finally:
        if caught:
            raise caught[0]


async def _catching(aw, caught):
    # aw's result; an interrupt goes into caught, and this task ends as any other
    try:
        return await aw
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as e:
        caught.append(e)


def finished_task(owner):
    # (internals) a Task that is done: awaiting it raises what its .data holds, from C; None where Task is not native
    if not internals or _NativeTask is None:
        return None
    task = _NativeTask(owner)
    task.state = False  # done, its waiter told
    return task


def wake_writer(writer, sock):
    # (internals) asyncio's IOQueue.remove(task) drops the whole entry of a socket, the other direction's waiter
    # included: after a reader parked on sock was cancelled, a writer parked on it would never wake. Waking it is
    # harmless (it writes what it can and waits again). Without internals there is nothing to mend this with.
    io = core._io_queue if internals else None
    if io is not None and writer is not None and writer.data is io and id(sock) not in io.map:
        core._task_queue.push(writer)
