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
    def wait_for(awaitable, timeout):
        return asyncio.wait_for(awaitable, timeout)

    @staticmethod
    def sleep(s):
        return asyncio.sleep(s)

    @staticmethod
    def sleep_ms(ms):
        return asyncio.sleep_ms(ms)

    @staticmethod
    def notify_event():
        return asyncio.Event()
