# TaskManager: MicroPythonOS's one door to asyncio for apps and the OS: tasks, sleeps, timeouts, the event loop.
import asyncio
import sys
from micropython import const

from ._log import warning

_IDLE_MS = const(10)  # the event loop wakes at least this often while the OS runs (the UI's pace)
_LONGEST_TIMEOUT_S = const(1 << 18)  # about 3 days: asyncio's timers reach 2**29 ms ahead on a 32-bit port
_STOP_GRACE_MS = const(100)  # what threads waited for, cancelled as the loop stops, may take this long to end


class TaskManager:
    task_list = []  # tasks made by create_task() that have not finished yet (see _forget_finished)
    keep_running = None
    disabled = False
    _idler = None  # the task start() runs the event loop for
    _loop_thread = None  # the thread in start(), whose event loop runs every task, while it is there
    _handed = []  # [coroutine, lock, result, exception, task] other threads handed over (see run_from_thread)
    _serving = []  # those the loop runs now, their threads waiting (touched by the loop's thread only)
    _handing = None  # the _thread lock that guards _handed and _loop_thread

    @classmethod
    async def _idle(cls):
        # Keeps the event loop running until stop(), or until a newer one replaces it (see start())
        me = asyncio.current_task()
        before, cls._idler = cls._idler, me
        if before is not None:  # the one a KeyboardInterrupt left asleep in the queue ends now, not in 10 ms
            before.cancel()
        while cls.keep_running and cls._idler is me:
            if cls._handed:
                cls._start_handed()
            await asyncio.sleep_ms(_IDLE_MS)

    @classmethod
    def loop_thread(cls):
        """The _thread ident of the thread whose start() runs the event loop, None while none does."""
        return cls._loop_thread

    @classmethod
    def run_from_thread(cls, coro):
        """Run coro on the event loop that start() runs in another thread and wait for it there: -> its result, or
        raises its exception. Only asyncio's own thread may touch its queue: the loop starts coro within _IDLE_MS.
        A RuntimeError if no start() runs in another thread (coro is closed, never run), or once stop() ended the
        loop: coro, if it had started, was cancelled and ended first (within _STOP_GRACE_MS)."""
        import _thread

        handed = [coro, _thread.allocate_lock(), None, None, None]
        handed[1].acquire()  # released by the loop once coro ended
        running = False
        if cls._handing is not None:  # (made by the first start())
            with cls._handing:
                running = cls._loop_thread not in (None, _thread.get_ident())
                if running:
                    cls._handed.append(handed)
        if not running:
            coro.close()
            raise RuntimeError("run_from_thread: no TaskManager.start() runs the event loop in another thread")
        handed[1].acquire()
        if handed[3] is not None:
            raise handed[3]
        return handed[2]

    @classmethod
    def _start_handed(cls):
        # Each is taken from _handed only once its task is made: in a full heap it stays there for the next turn,
        # and the loop (start()'s, the OS's) goes on
        while cls._handed:
            one = cls._handed[0]  # (only this thread takes from _handed; others append)
            try:
                cls._serving.append(one)
                try:
                    one[4] = asyncio.create_task(cls._serve(one))
                except MemoryError:
                    cls._serving.remove(one)
                    raise
            except MemoryError:
                return
            with cls._handing:
                cls._handed.pop(0)

    @classmethod
    async def _serve(cls, handed):
        try:
            result = await handed[0]
            if handed[0] is not None:
                handed[2] = result
        except BaseException as e:  # (the waiting thread raises it)
            cls._answer(handed, e)
        finally:
            cls._answer(handed)

    @classmethod
    def _answer(cls, handed, error=None):
        # The waiting thread goes on, once (handed[0] None: answered), raising error if one is given (or the one
        # _end_serving set first: the cancel it made is not what the thread is told)
        if handed[0] is None:
            return
        handed[0] = None
        if error is not None and handed[3] is None:
            handed[3] = error
        if handed in cls._serving:
            cls._serving.remove(handed)
        handed[1].release()

    @classmethod
    def start(cls):
        """Run the event loop until stop() (MicroPythonOS's main calls it last). A KeyboardInterrupt raised in a
        task ends that task and leaves asyncio's loop, which catches Exception only: the loop is entered again,
        and every other task goes on where it was."""
        if cls.disabled:
            warning("TaskManager", "start() while disabled: the event loop does not run")
            return
        cls.keep_running = True
        cls._note_loop_thread(True)
        try:
            cls._after_synchronous_calls()
            while cls.keep_running:
                try:
                    asyncio.run(cls._idle())
                except KeyboardInterrupt:
                    warning("TaskManager",
                            "KeyboardInterrupt in the event loop; the other tasks go on (stop() ends it)")
        finally:
            cls._idler = None
            try:
                cls._end_serving()
            finally:  # (a heap too full for that still answers every thread, and none hands over any more)
                cls._note_loop_thread(False)

    @classmethod
    def _after_synchronous_calls(cls):
        # A thread's synchronous download that runs asyncio's loop (no start() ran when it came) ends before this
        # loop begins: two threads running asyncio's one queue crash the interpreter. The calls that come once
        # start() named its thread are handed to its loop (see download_manager._sync_or_async).
        calls = sys.modules.get("mpos.net.download_manager")
        lock = getattr(calls, "_running_lock", None)  # (None: not loaded, half made by a full heap, or no threads)
        if lock is not None and getattr(calls, "_running_thread", None) != cls._loop_thread:  # (not this thread's)
            with lock:
                pass

    @classmethod
    def _end_serving(cls):
        # What threads wait for and the loop was running is cancelled and, within _STOP_GRACE_MS, ends before they
        # hear of it: a download's .part closed, its slot and place in downloads() given back. Nothing of it runs on
        # behind their back in a later start() (nor holds the outfile that a thread's new try would write).
        tasks = [one[4] for one in cls._serving]
        if not tasks:
            return
        for one in cls._serving:
            one[3] = RuntimeError("the event loop stopped while it ran this")
        for task in tasks:
            task.cancel()

        async def ended():
            from time import ticks_diff, ticks_ms

            since = ticks_ms()
            while not all(task.done() for task in tasks) and ticks_diff(ticks_ms(), since) < _STOP_GRACE_MS:
                await asyncio.sleep_ms(1)

        try:
            asyncio.run(ended())
        except Exception as e:  # (the threads are answered all the same)
            warning("TaskManager", "ending what threads waited for failed: %r" % (e,))

    @classmethod
    def _note_loop_thread(cls, running):
        # The thread of start() while it runs; once it returns, what other threads handed over fails, started or not
        try:
            import _thread
        except ImportError:  # (a port without threads: none can hand anything over)
            return
        if cls._handing is None:
            cls._handing = _thread.allocate_lock()
        with cls._handing:
            cls._loop_thread = _thread.get_ident() if running else None
            handed, cls._handed = cls._handed, []
        for one in handed:
            one[0].close()
            cls._answer(one, RuntimeError("the event loop stopped before it ran this"))
        if not running:  # (what was under way stays in asyncio's queue: a later start() takes it on, unanswered)
            for one in cls._serving[:]:
                cls._answer(one, RuntimeError("the event loop stopped while it ran this"))

    @classmethod
    def stop(cls):
        cls.keep_running = False

    @classmethod
    def enable(cls):
        cls.disabled = False

    @classmethod
    def disable(cls):
        # While disabled, create_task() and create_supervised_task() start nothing and return None
        cls.disabled = True

    @classmethod
    async def _tracked(cls, coro):
        try:
            return await coro
        finally:
            t = asyncio.current_task()
            if t in cls.task_list:
                cls.task_list.remove(t)

    @classmethod
    def _forget_finished(cls):
        # A task cancelled before it first ran never runs _tracked's cleanup (the cancellation is thrown in before
        # its first line): it, and all its coroutine holds (an app's screen), goes from the list here instead. A
        # callback micropython.schedule runs between these bytecodes (an LVGL timer's create_task) may forget some
        # first: the list can shrink under the index, so each task goes by itself, not by its place.
        tasks = cls.task_list
        i = len(tasks)
        while i:
            i -= 1
            try:
                task = tasks[i]
            except IndexError:  # (shrunk meanwhile)
                continue
            if task.done():
                try:
                    tasks.remove(task)
                except ValueError:  # (the callback took it first)
                    pass

    @classmethod
    def create_task(cls, coro):
        if cls.disabled:
            return None
        cls._forget_finished()
        t = asyncio.create_task(cls._tracked(coro))
        cls.task_list.append(t)
        return t

    @classmethod
    def create_supervised_task(cls, factory, restart_delay_ms=200, restart_on_return=False):
        """A task that runs factory() (a new coroutine each time) and runs it again restart_delay_ms after it
        raised, KeyboardInterrupt included, and also after it returned if restart_on_return (a console that must
        never go away). Cancelling the task ends it for good. None while disabled, as create_task()."""
        return cls.create_task(cls._supervise(factory, restart_delay_ms, restart_on_return))

    @staticmethod
    async def _supervise(factory, restart_delay_ms, restart_on_return):
        while True:
            try:
                result = await factory()
                if not restart_on_return:
                    return result
                why = "returned"
            except asyncio.CancelledError:
                raise
            except (Exception, KeyboardInterrupt) as e:
                why = "failed: %r" % (e,)
            warning("TaskManager", "supervised task %s %s; restarting it in %d ms" % (
                getattr(factory, "__name__", factory), why, restart_delay_ms))
            await asyncio.sleep_ms(restart_delay_ms)

    @classmethod
    def list_tasks(cls):
        """The tasks create_task() made that have not finished yet (a new list)."""
        cls._forget_finished()
        return list(cls.task_list)

    @staticmethod
    async def wait_for(awaitable, timeout):
        # asyncio.wait_for, except that what finished is never reported as timed out: the awaitable runs in a task
        # of its own that the alarm cancels only while it is not done, and a cancellation that reaches this task
        # comes from outside (never turned into TimeoutError) and is passed on to the awaitable, whose end it awaits.
        if timeout is None or timeout >= _LONGEST_TIMEOUT_S:  # (a longer one could not be timed: none)
            return await awaitable
        done = asyncio.Event()
        out = [None, None]  # the result, or the exception
        fired = False

        async def run():
            try:
                out[0] = await awaitable
            except BaseException as e:  # its own error, or the alarm's cancellation
                out[1] = e
            done.set()

        runner = asyncio.create_task(run())

        async def alarm():
            nonlocal fired
            interrupted = None
            try:
                await asyncio.sleep(timeout)
            except asyncio.CancelledError:
                return  # (the wait ended first)
            except BaseException as e:  # an interrupt (Ctrl-C) as the time ran out: the timeout holds all the same
                interrupted = e
            # (a Task passed in may have finished while the runner has not yet taken its result)
            if not done.is_set() and not (isinstance(awaitable, asyncio.Task) and awaitable.done()):
                fired = True
                runner.cancel()
            if interrupted is not None:
                raise interrupted

        a = asyncio.create_task(alarm())
        try:
            await done.wait()
        except asyncio.CancelledError as e:
            runner.cancel()
            try:  # the awaitable's cleanup ends before the cancel goes on (a download's OUTFILE is free again)
                await runner
            except BaseException:  # (its CancelledError; a second cancel of this task stops the wait)
                pass
            raise e
        finally:
            a.cancel()
        if out[1] is None:
            return out[0]
        if fired and isinstance(out[1], asyncio.CancelledError):
            raise asyncio.TimeoutError
        raise out[1]

    @staticmethod
    def sleep(s):
        return asyncio.sleep(s)

    @staticmethod
    def sleep_ms(ms):
        return asyncio.sleep_ms(ms)

    @staticmethod
    def notify_event():
        return asyncio.Event()

    @staticmethod
    def good_stack_size():
        """Bytes of stack for a thread that runs app code: _thread.stack_size(TaskManager.good_stack_size())."""
        # an ESP32 has little RAM for thread stacks; on the desktop, heavy apps crash below about 20 KB
        return 16 * 1024 if sys.platform == "esp32" else 24 * 1024

    @staticmethod
    def start_new_thread(function=None, args=()):
        """Run function(*args) on a new thread with good_stack_size() of stack; returns what _thread returns.
        Threads are few (an ESP32 runs a handful) and can only end themselves: a task is the better choice.
        Without a function it starts nothing, as MicroPythonOS's own placeholder of this name."""
        if function is None:
            return None
        import _thread

        stack = _thread.stack_size(TaskManager.good_stack_size())  # the setting is global: put it back after
        try:
            return _thread.start_new_thread(function, args)
        finally:
            _thread.stack_size(stack)
