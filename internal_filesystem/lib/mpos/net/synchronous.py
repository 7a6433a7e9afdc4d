# A synchronous call (the REPL, a script: no event loop runs): download_manager runs its coroutine on asyncio's loop
# in the caller's thread, here. Loaded with the first such call: an app under TaskManager's loop never needs it.
#
# An interrupt that is no Exception (Ctrl-C's KeyboardInterrupt, an app's SystemExit) leaves asyncio's loop at once,
# from wherever it came. Unless it came through the coroutine, that is left suspended, holding its socket, slot,
# listing and .part, and no loop would run it again: it is cancelled, and the loop runs its cleanup to the end before
# the interrupt goes on to the caller.
import asyncio
from asyncio import core


def run(coro):
    # asyncio.run(coro); then the tasks it cancelled (a session's watchdog) end too: none is left in asyncio's queue,
    # holding what it held, until some later loop
    steps = []  # "began", then "ended" once coro ended (an interrupt that came through it ran its cleanup)
    loop = asyncio.get_event_loop()
    interrupts = []  # what left the loop (Ctrl-C, or an error around coro): the first Ctrl-C, else the first error,
    # goes on to the caller
    task = asyncio.create_task(_noting_steps(coro, steps))  # last: from here on a full heap can't leave it queued
    try:
        try:
            return loop.run_until_complete(task)
        except BaseException as e:
            if isinstance(e, Exception) and len(steps) == 2:  # coro's own: it ended
                raise
            interrupts.append(e)  # (a full heap before coro began, or while it waits: it is ended as for Ctrl-C)
        core.cur_task = None  # (a task the interrupt left named as running can't be cancelled)
        if len(steps) == 1:  # coro is suspended
            task.cancel()
            while len(steps) == 1 and not _ran(loop, task, interrupts):
                pass
        elif not steps:  # nothing of coro ran: a task still queued ends without running it (a dead one: no-op)
            task.cancel()
            coro.close()
    finally:
        core.cur_task = None
        _let_cancelled_end(loop, interrupts)
        for e in interrupts:  # a Ctrl-C in the cleanup after a full heap's error is the caller's, not that error
            if not isinstance(e, Exception):
                raise e
        if interrupts:
            raise interrupts[0]


def _let_cancelled_end(loop, interrupts):
    # What the call cancelled (a session's watchdog) is due before a pause of the loop's: it ends in that pause
    while True:
        try:
            pause = asyncio.create_task(_pause())
        except MemoryError:  # (no heap for the pause: it ends in some later loop; the call's result stands)
            return
        if _ran(loop, pause, interrupts):
            return


def _ran(loop, task, interrupts):
    # -> True once the loop ran task to its end, False when an interrupt came first (noted; the call's third one is
    # raised at once: a cleanup that can't end must not leave Ctrl-C without effect)
    try:
        loop.run_until_complete(task)
    except Exception:  # (what a cleanup raised, its cancellation: the interrupt is what the caller gets)
        pass
    except asyncio.CancelledError:
        pass
    except BaseException as e:
        interrupts.append(e)
        if len(interrupts) > 2:
            raise
        core.cur_task = None
        return False
    return True


async def _pause():
    await asyncio.sleep_ms(1)


async def _noting_steps(coro, steps):
    steps.append("began")
    try:
        return await coro
    finally:
        steps.append("ended")
