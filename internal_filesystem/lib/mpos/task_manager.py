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
        # TimeoutError and its bytes were gone. Here the awaitable's task is cancelled only if it is not done.
        if timeout is None:
            return await awaitable
        task = awaitable if isinstance(awaitable, asyncio.Task) else asyncio.create_task(awaitable)
        fired = False

        async def alarm():
            nonlocal fired
            await asyncio.sleep(timeout)
            if not task.done():
                fired = True
                task.cancel()

        a = asyncio.create_task(alarm())
        try:
            return await task
        except asyncio.CancelledError:
            if fired:
                raise asyncio.TimeoutError
            raise
        finally:
            a.cancel()

    @staticmethod
    def sleep(s):
        return asyncio.sleep(s)

    @staticmethod
    def sleep_ms(ms):
        return asyncio.sleep_ms(ms)

    @staticmethod
    def notify_event():
        return asyncio.Event()
