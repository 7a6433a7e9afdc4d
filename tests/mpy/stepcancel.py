# Cancel a coroutine at its k-th step, for k = 0, 1, 2, ... (tests/test_cancel_sweep.py). A step is one resumption of
# the coroutine by the event loop, so k counts the task's own turns, not time: the same k lands at the same point of
# the coroutine's code whatever else the loop does, as long as the server sends the same pieces.
import asyncio


class Stepped:
    # A coroutine as a task runs it, counting the loop's resumptions of it (asyncio only needs send and throw)
    def __init__(self, coro):
        self.coro = coro
        self.steps = 0

    def send(self, value):
        self.steps += 1
        return self.coro.send(value)

    def throw(self, *exc):
        self.steps += 1
        return self.coro.throw(*exc)

    def close(self):
        return self.coro.close()


async def cancel_at(coro, k, again=None):
    # Runs coro as a task and cancels it once it has taken k steps: -> ("finished", its result) when it ended first,
    # ("cancelled", steps) when the CancelledError reached the canceller (("cancelled again", steps) after a second
    # cancel), ("swallowed", what it returned) when it did not. again: cancelled once more when it has taken that many
    # steps of its cleanup, if it is still running then.
    stepped = Stepped(coro)
    task = asyncio.create_task(stepped)
    while stepped.steps < k and not task.done():
        await asyncio.sleep(0)
    if task.done():
        return "finished", await task
    task.cancel()
    how = "cancelled"
    if again is not None:
        while stepped.steps <= k + again and not task.done():
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
            how = "cancelled again"
    try:
        got = await task
    except asyncio.CancelledError:
        return how, stepped.steps
    return "swallowed", got


def loop_is_idle(expected=None):
    # -> what still waits in the event loop besides the running task and `expected` (a task that sleeps there by
    # design, such as a session's watchdog): tasks queued, sockets polled ([] when none)
    from asyncio import core

    queue = core._task_queue
    left = []
    if expected is not None and not expected.done():
        queue.remove(expected)  # looked past: the queue shows its first task only
    if queue.peek() is not None:
        left.append("a task queued")
    if expected is not None and not expected.done():
        queue.push(expected, expected.ph_key)
    if core._io_queue.map:
        left.append("%d sockets polled" % len(core._io_queue.map))
    return left


async def settle():
    # A few turns for what a cancel leaves behind to run to its end (a cancelled task's own cleanup)
    for _ in range(3):
        await asyncio.sleep(0)


def session_is_clean(session, base):
    # -> what a session still holds once a request on it ended ([] when nothing): busy or dead connections in its
    # pool, descriptors beyond its idle connections' (base: fd_count() before the session)
    from testlib import fd_count

    held = []
    if session._busy or any(conn.sock is None for conn, _ in session._idle):
        held.append("the pool holds %d busy, %d dead" % (len(session._busy), len(session._idle)))
    if fd_count() - base > len(session._idle):
        held.append("%d fds left" % (fd_count() - base - len(session._idle)))
    return held


def put(path, data):
    # The file at path holds data now (None: there is none)
    import os
    from testlib import exists

    if data is None:
        if exists(path):
            os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write(data)


def admission_is_free():
    # -> what DownloadManager still holds: slots, waiters, listed downloads, session users ([] when nothing)
    from mpos.net import admission
    from testlib import session_users, slot_queue, slots_taken

    held = []
    for name, value in (("slots", slots_taken()), ("waiting", len(slot_queue())),
                        ("listed", len(admission.listed())), ("users", session_users())):
        if value:
            held.append("%s %d" % (name, value))
    return held


class Starved(Stepped):
    # A coroutine whose k-th resumption (counted from 0) runs with the heap exhausted (tests/test_memory_sweep.py):
    # "lock", micropython.heap_lock() around it, every allocation of that step fails, a collection frees nothing; or
    # "fill", the heap filled with blocks just before it and let go right after it, only what that step itself let
    # go can be had again. starved: whether that step came (the coroutine had not ended before it).
    def __init__(self, coro, k, how):
        super().__init__(coro)
        self.k = k
        self.how = how
        self.starved = False

    def send(self, value):
        if self.steps != self.k:
            return super().send(value)
        return self._starve(value, None)

    def throw(self, *exc):
        if self.steps != self.k:
            return super().throw(*exc)
        return self._starve(None, exc[0])

    def _starve(self, value, exc):
        # (no call with *args in the starved step: it would make a tuple)
        import gc
        import micropython

        self.starved = True
        self.steps += 1
        coro = self.coro
        hogs = None
        if self.how == "lock":
            micropython.heap_lock()
        else:
            from testlib import fill

            gc.collect()
            hogs = fill(None)
        try:
            return coro.send(value) if exc is None else coro.throw(exc)
        finally:
            if hogs is None:
                micropython.heap_unlock()
            hogs = None


async def starve_at(coro, k, how):
    # Runs coro as a task whose k-th step is starved (see Starved) -> ("returned", what) or ("raised", the exception's
    # type and message), and whether the starved step came. What it ends with goes in a box made beforehand: a
    # coroutine that ends in the starved step hands its value on without the heap. An exception made in a starved
    # step is the interpreter's one emergency object, whose type the next such exception overwrites: its type is
    # kept apart, and its message only while the type still matches.
    box = [None, None, None]

    async def boxed():
        try:
            box[0] = await coro
        except BaseException as e:
            box[1] = e
            box[2] = type(e)

    starved = Starved(boxed(), k, how)
    await asyncio.create_task(starved)
    if box[2] is not None:
        return "raised", "%s %s" % (box[2].__name__, box[1] if type(box[1]) is box[2] else "?"), starved.starved
    return "returned", box[0], starved.starved
