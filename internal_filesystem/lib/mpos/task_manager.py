# TaskManager: MicroPythonOS's one door to asyncio for apps (create tasks, sleep, time out).
import asyncio


class TaskManager:
    task_list = []  # tasks made by create_task() that have not finished yet
    keep_running = None
    disabled = False

    @classmethod
    async def _idle(cls, ms):
        # Keeps the event loop alive while the OS runs (LVGL and apps schedule their own tasks).
        while cls.keep_running:
            await asyncio.sleep_ms(ms)

    @classmethod
    def start(cls):
        if cls.disabled:
            return
        cls.keep_running = True
        asyncio.run(cls._idle(10))

    @classmethod
    def stop(cls):
        cls.keep_running = False

    @classmethod
    def enable(cls):
        cls.disabled = False

    @classmethod
    def disable(cls):
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
    def create_task(cls, coro):
        if cls.disabled:
            return None
        t = asyncio.create_task(cls._tracked(coro))
        cls.task_list.append(t)
        return t

    @staticmethod
    async def wait_for(awaitable, timeout):
        # asyncio.wait_for, except that what finished is never reported as timed out. MicroPython's cancels the
        # task it runs the awaitable in when the time is up, and cancelling a task also overwrites the result of
        # the one it waits on when that one has just finished: a download that completed in the same turn raised
        # TimeoutError and its bytes were gone. Here the awaitable runs in a task of its own that the alarm
        # cancels only while it is not done, and this task waits on an Event: a cancellation that reaches it
        # comes from outside (never turned into TimeoutError) and is passed on to the awaitable.
        if timeout is None:
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
            await asyncio.sleep(timeout)
            # (a Task passed in may have finished while the runner has not yet taken its result)
            if not done.is_set() and not (isinstance(awaitable, asyncio.Task) and awaitable.done()):
                fired = True
                runner.cancel()

        a = asyncio.create_task(alarm())
        try:
            await done.wait()
        except asyncio.CancelledError:
            runner.cancel()
            raise
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
