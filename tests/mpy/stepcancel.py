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
