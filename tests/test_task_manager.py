"""TaskManager on MicroPython: the whole surface MicroPythonOS calls (issue 18), each behaviour as the OS uses it.

start() runs the event loop until stop() and survives a KeyboardInterrupt raised in a task; enable()/disable();
supervised tasks restarted after a crash but never after a cancellation; list_tasks(), notify_event(),
good_stack_size(), start_new_thread(). create_task's bookkeeping and wait_for's guarantee are covered in
test_download_contract.py. Delays are tens of milliseconds: the tests measure order and spacing, not seconds.
"""
from tools.testservers import sha256_of

# A task the tests run next to the others: it counts its turns.
COUNTER = """
import asyncio, time
from mpos import TaskManager

turns = []

async def counter(ms=5):
    while True:
        await asyncio.sleep_ms(ms)
        turns.append(time.ticks_ms())

def turns_after(t):
    return len([x for x in turns if time.ticks_diff(x, t) > 0])
"""


def test_start_runs_the_loop_until_stop_and_prints_nothing(mpy):
    r = mpy.run(COUNTER + """
done = []

async def app():
    await asyncio.sleep_ms(50)
    done.append(len(turns))
    TaskManager.stop()

TaskManager.create_task(counter())
TaskManager.create_task(app())  # made before the loop runs, as MicroPythonOS's main does
t0 = time.ticks_ms()
TaskManager.start()
result(ms=time.ticks_diff(time.ticks_ms(), t0), turns=done, running=TaskManager.keep_running)
""")
    v = r.value
    assert 45 <= v["ms"] < 1000, v
    assert v["turns"][0] >= 3, v  # the other task ran while the loop did
    assert v["running"] is False
    assert r.stderr == "" and r.stdout.startswith("@@RESULT") and r.stdout.count("\n") == 1  # nothing else


def test_a_keyboard_interrupt_in_a_task_leaves_the_other_tasks_running(mpy):
    # The interrupt leaves asyncio's own loop; start() goes back in, and every other task goes on. Tasks made
    # with asyncio.create_task (not through TaskManager) are covered too.
    r = mpy.run(COUNTER + """
interrupted = []

async def interrupted_app(name):
    await asyncio.sleep_ms(20)
    interrupted.append((name, time.ticks_ms()))
    raise KeyboardInterrupt

async def app():
    await asyncio.sleep_ms(150)
    TaskManager.stop()

TaskManager.create_task(counter())
app_task = TaskManager.create_task(interrupted_app("task manager"))
asyncio.create_task(interrupted_app("asyncio"))
TaskManager.create_task(app())
TaskManager.start()
last = max(t for name, t in interrupted)
result(interrupted=sorted(name for name, t in interrupted), turns_after=turns_after(last),
       listed=app_task in TaskManager.list_tasks())
# stop() ended start(): a second start() runs the loop again
TaskManager.create_task(app())
before = len(turns)
TaskManager.start()
result(second_run_turns=len(turns) - before)
""")
    first, second = r.results
    assert first["interrupted"] == ["asyncio", "task manager"]
    assert first["turns_after"] >= 10, first  # 130 ms more of 5 ms turns
    assert first["listed"] is False  # the interrupted task left the list
    assert second["second_run_turns"] >= 10, second
    assert r.stderr.count("KeyboardInterrupt") == 2, r.stderr  # logged once each


def test_a_disabled_task_manager_starts_nothing(mpy):
    r = mpy.run("""
import asyncio
from mpos import TaskManager

ran = []

async def app(name):
    ran.append(name)

async def factory():
    ran.append("supervised")

TaskManager.disable()
made = [TaskManager.create_task(app("while disabled")), TaskManager.create_supervised_task(factory)]
TaskManager.start()  # returns at once
stopped = TaskManager.keep_running
TaskManager.enable()
task = TaskManager.create_task(app("enabled"))

async def main():
    await task

asyncio.run(main())
result(made=made, ran=ran, keep_running=stopped)
""")
    assert r.value == {"made": [None, None], "ran": ["enabled"], "keep_running": None}
    assert r.stderr.count("disabled") == 1, r.stderr


def test_a_task_cancelled_before_it_ran_is_not_listed_and_lets_its_screen_go(mpy):
    # A user who backs out of a screen at once: onDestroy cancels the task onCreate made before it ever ran. The task
    # is done; list_tasks() must not report it, nor keep the screen (and all it holds) alive.
    r = mpy.run("""
import asyncio
from mpos import TaskManager

class Screen:
    def onCreate(self):
        self.icons = bytearray(2000)
        self.task = TaskManager.create_task(self.fetch())

    async def fetch(self):
        await asyncio.sleep_ms(1000)

    def onDestroy(self):
        self.task.cancel()

async def main():
    base = heap_in_use()
    for i in range(20):
        screen = Screen()
        screen.onCreate()
        screen.onDestroy()
    screen = None
    await asyncio.sleep_ms(10)
    listed = TaskManager.list_tasks()
    result(listed=len(listed), held=heap_in_use() - base)

run(main())
""")
    assert r.value["listed"] == 0, r.value
    assert r.value["held"] < 2000, r.value  # 20 screens of 2 KB each would be 40 KB


# An LVGL timer's callback, which starts a task: micropython.schedule(timer, None) runs it before the next bytecode
TIMER = """
import asyncio, micropython
from mpos import DownloadManager, TaskManager

async def fetch():
    await asyncio.sleep_ms(5)
    return "fetched"

timer_made = []
def timer(_):
    timer_made.append(TaskManager.create_task(fetch()))
"""


def test_a_timer_that_creates_a_task_while_a_download_drops_the_idle_closer_breaks_neither(mpy, fault):
    # The idle session's closer, cancelled before it first ran (an app cancelling what it listed), stays listed until
    # the next create_task() forgets it. The next download drops it at its end; an LVGL timer's create_task
    # (micropython.schedule runs it between the thread's bytecodes) forgets it at that moment. The download used to
    # raise ValueError from its cleanup.
    r = mpy.run(TIMER + """
class TimerFiresAsTheClosersPlaceIsSought(list):
    def fire(self):
        if not timer_made:
            micropython.schedule(timer, None)  # (runs before the next bytecode)

    def __contains__(self, task):
        self.fire()
        for listed in self:
            if listed is task:
                return True
        return False

    def remove(self, task):
        self.fire()
        super().remove(task)

async def main():
    first = await DownloadManager.download_url(URL)
    for task in TaskManager.list_tasks():  # the idle session's closer, made as the download ended
        task.cancel()
    await asyncio.sleep_ms(0)  # (the cancel is thrown in: done, still listed)
    TaskManager.task_list = TimerFiresAsTheClosersPlaceIsSought(TaskManager.task_list)
    DownloadManager.session_idle_ms = 0
    try:
        second = await DownloadManager.download_url(URL)
        second = sha256(second)
    except Exception as e:
        second = repr(e)
    timer_task = await timer_made[0] if timer_made else None
    result(first=sha256(first), second=second, timer=timer_task, session=DownloadManager.is_session_active())

run(main())
""", URL=fault.url("/bytes/3000"), timeout=20)
    assert r.value == {"first": sha256_of(3000), "second": sha256_of(3000), "timer": "fetched", "session": False}, \
        r.value


def test_a_timer_that_creates_a_task_while_create_task_forgets_finished_ones_breaks_neither(mpy):
    # Screens backed out of at once leave their cancelled tasks listed until the next create_task() forgets them. An
    # LVGL timer (micropython.schedule runs it between the thread's bytecodes; the App Store's detail screen starts
    # its icon download from one) calls create_task() while that forgetting goes on: the list shrinks under it. Both
    # calls make their task; the app's used to raise IndexError.
    r = mpy.run(TIMER + """
fired = []
class FinishedAsTheTimerFires:  # stands for a finished task in the list, looked at as the timer fires
    def done(self):
        if not fired:
            fired.append(micropython.schedule(timer, None))
        return True

async def main():
    for _ in range(3):  # onCreate, then onDestroy at once
        TaskManager.create_task(fetch()).cancel()
    await asyncio.sleep_ms(0)  # (the cancels are thrown in: done, still listed)
    TaskManager.task_list.append(FinishedAsTheTimerFires())
    try:
        app = await TaskManager.create_task(fetch())
    except Exception as e:
        app = repr(e)
    timer_task = await timer_made[0]
    result(app=app, timer=timer_task, timers=len(timer_made), listed=len(TaskManager.list_tasks()))

run(main())
""", timeout=20)
    assert r.value == {"app": "fetched", "timer": "fetched", "timers": 1, "listed": 0}, r.value


SUPERVISED = COUNTER + """
starts = []  # when each run of the supervised coroutine began
first = None

def factory():
    # a new coroutine per run: the first fails, the second is interrupted, the third runs until cancelled
    async def console():
        starts.append(time.ticks_ms())
        await asyncio.sleep_ms(5)
        if len(starts) == 1:
            raise ValueError("console crashed")
        if len(starts) == 2:
            raise KeyboardInterrupt
        while True:
            await asyncio.sleep_ms(5)
    return console()
"""


def test_a_supervised_task_is_restarted_after_a_crash_until_cancelled(mpy):
    r = mpy.run(SUPERVISED + """
async def main():
    task = TaskManager.create_supervised_task(factory, restart_delay_ms=40)
    await asyncio.sleep_ms(200)
    runs = len(starts)
    task.cancel()
    try:
        await task
        how = "returned"
    except asyncio.CancelledError:
        how = "cancelled"
    await asyncio.sleep_ms(100)
    gaps = [time.ticks_diff(b, a) for a, b in zip(starts, starts[1:])]
    result(runs=runs, gaps=gaps, how=how, runs_after_cancel=len(starts) - runs, done=task.done())

run(main())
""")
    v = r.value
    assert v["runs"] == 3 and v["runs_after_cancel"] == 0, v
    assert all(45 <= gap < 200 for gap in v["gaps"]), v  # 5 ms of work, then the 40 ms delay
    assert v["how"] == "cancelled" and v["done"] is True
    assert "console crashed" in r.stderr and "KeyboardInterrupt" in r.stderr


def test_a_supervised_task_cancelled_while_it_waits_to_restart_is_not_restarted(mpy):
    r = mpy.run(SUPERVISED + """
async def main():
    task = TaskManager.create_supervised_task(factory, restart_delay_ms=300)
    await asyncio.sleep_ms(60)  # the first run failed; the restart is due in 250 ms
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await asyncio.sleep_ms(400)
    result(runs=len(starts))

run(main())
""")
    assert r.value == {"runs": 1}


def test_a_supervised_task_that_returns(mpy):
    r = mpy.run("""
import asyncio
from mpos import TaskManager

runs = []

def factory():
    async def job():
        runs.append(1)
        return "finished"
    return job()

async def main():
    once = TaskManager.create_supervised_task(factory, restart_delay_ms=10)
    value = await once  # returned: done, not restarted
    await asyncio.sleep_ms(50)
    single = len(runs)
    always = TaskManager.create_supervised_task(factory, restart_delay_ms=10, restart_on_return=True)
    await asyncio.sleep_ms(100)
    again = len(runs) - single
    always.cancel()
    await asyncio.sleep_ms(30)
    result(value=value, single=single, again=again, after_cancel=len(runs) - single - again, done=always.done())

run(main())
""")
    v = r.value
    assert (v["value"], v["single"], v["after_cancel"], v["done"]) == ("finished", 1, 0, True), v
    assert 3 <= v["again"] <= 11, v  # once per 10 ms
    assert r.stderr.count("returned") in (v["again"] - 1, v["again"])  # each return is logged (the last maybe)


def test_list_tasks_notify_event_and_stack_size(mpy):
    r = mpy.run("""
import asyncio
from mpos import TaskManager

async def main():
    event = TaskManager.notify_event()
    woke = []

    async def waiter():
        await event.wait()
        woke.append(1)

    async def quick():
        pass

    waiting = TaskManager.create_task(waiter())
    finished = TaskManager.create_task(quick())
    await asyncio.sleep_ms(10)
    listed = TaskManager.list_tasks()
    listed.clear()  # a copy: the TaskManager's own list is untouched
    before = [waiting in TaskManager.list_tasks(), finished in TaskManager.list_tasks()]
    event.set()
    await asyncio.sleep_ms(10)
    result(before=before, woke=woke, after=len(TaskManager.list_tasks()), stack=TaskManager.good_stack_size())

run(main())
""")
    assert r.value == {"before": [True, False], "woke": [1], "after": 0, "stack": 24 * 1024}


def test_start_new_thread_runs_a_function_with_the_good_stack_size(mpy):
    r = mpy.run("""
import _thread, time
from mpos import TaskManager

ran = []

def job(a, b):
    ran.append((a + b, _thread.get_ident()))

_thread.stack_size(32 * 1024)  # someone else's setting: it is kept
ident = TaskManager.start_new_thread(job, (2, 3))
kept = _thread.stack_size()
for _ in range(100):
    if ran:
        break
    time.sleep_ms(5)
result(sum=ran[0][0], other_thread=ran[0][1] != _thread.get_ident(), returned_int=isinstance(ident, int),
       kept=kept, placeholder=TaskManager.start_new_thread())
""")
    assert r.value == {"sum": 5, "other_thread": True, "returned_int": True, "kept": 32 * 1024, "placeholder": None}


def test_wait_for_with_a_timeout_past_what_ticks_count_waits_without_one(mpy):
    # float('inf') or sys.maxsize seconds: the awaitable's result, and nothing printed by a timer that could not start
    r = mpy.run("""
import asyncio, sys
from mpos import TaskManager

async def work():
    await asyncio.sleep_ms(20)
    return 7

async def main():
    got = []
    for timeout in (float('inf'), sys.maxsize):
        got.append(await TaskManager.wait_for(work(), timeout))
    result(got=got)
    await asyncio.sleep_ms(20)

run(main())
""")
    assert r.value == {"got": [7, 7]} and r.stdout.count("\n") == 1 and r.stderr == "", (r.stdout, r.stderr)
