"""Threads against DownloadManager and TaskManager, as a hostile app would use them (docs/decisions.md, "Synchronous
use"): threads downloading synchronously with no loop at all, threads handing downloads to TaskManager's loop while
it runs downloads and a websocket of its own, stop() while threads wait, a full heap at the handover. Every result is
checked byte for byte (sha256), every thread gets its own; waits are bounded only as hang guards.
"""
import json

import pytest

from tools.testservers import sha256_of

HEAD = """
import _thread, time, asyncio
from mpos import DownloadManager, TaskManager
OUT = {}
FD0 = fd_count()

def wait_until(ready, ms=20000):  # a hang guard, not a timing: the condition is what is waited for
    t0 = time.ticks_ms()
    while not ready():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise AssertionError("hang guard: waited %d ms" % ms)
        time.sleep_ms(1)

def wait_for_the_loop():
    wait_until(lambda: TaskManager.loop_thread() is not None)

def shown(r):  # a result as JSON can carry it: bytes by their sha256
    return sha256(r) if isinstance(r, (bytes, bytearray)) else (r if r in (None, True, False) else repr(r))
"""


def test_a_thread_downloading_while_another_runs_its_synchronous_download_gets_its_result(mpy, fault):
    # No loop runs: each thread's call runs asyncio's loop to completion, and asyncio's loop state is one per process.
    # The second call comes while the first one's loop is running (its callback waits for it): it gets its bytes, not
    # a coroutine (the running loop was not its own), and the two never run one queue together.
    r = mpy.run(HEAD + """
def second():
    OUT["second_called"] = True
    try:
        OUT["second"] = shown(DownloadManager.download_url(B))
    except BaseException as e:
        OUT["second"] = repr(e)

def first_progress(percent):
    if "second_called" not in OUT:
        TaskManager.start_new_thread(second)
        wait_until(lambda: "second_called" in OUT)
        time.sleep_ms(20)  # (the second call gets well into download_url while this loop still runs)

def first():
    try:
        OUT["first"] = shown(DownloadManager.download_url(A, progress_callback=first_progress))
    except BaseException as e:
        OUT["first"] = repr(e)

TaskManager.start_new_thread(first)
wait_until(lambda: "first" in OUT and "second" in OUT)
result(out=OUT, listed=DownloadManager.downloads(), session=DownloadManager.is_session_active(), fds=fd_count() - FD0)
""", A=fault.url("/bytes/200000?trickle=1"), B=fault.url("/bytes/30000?seed=1"))
    v = r.value
    assert v["out"] == {"first": sha256_of(200000), "second_called": True, "second": sha256_of(30000, 1)}, v
    assert (v["listed"], v["session"], v["fds"]) == ([], False, 0), v


# What a thread checks in each round: its own bytes in memory, file (a cut resumed) and stream mode, its own 404 and
# raised HTTPError, its own post
EACH_ROUND = """
import json
BAD = []
BAD_LOCK = _thread.allocate_lock()  # (the unix port's threads run without a GIL: a list two threads grow at once
                                    # may lose an entry, and a lost failure would pass)
def check(ok, what):
    if not ok:
        with BAD_LOCK:
            BAD.append(what)

def own_downloads(n, k, key):
    size, seed = SIZES[n][k]
    url = BASE + "/bytes/%d?seed=%d" % (size, seed)
    check(shown(DownloadManager.download_url(url)) == SHAS[n][k], ("memory", n, k))
    ok = DownloadManager.download_url(url + "&drop=7000&key=%s%d_%d" % (key, n, k), outfile="own%d.bin" % n)
    check(ok is True and sha256_file("own%d.bin" % n) == SHAS[n][k], ("file", n, k, ok))
    chunks = []
    ok = DownloadManager.download_url(url + "&trickle=1", chunk_callback=chunks.append)
    check(ok is True and sha256(b"".join(chunks)) == SHAS[n][k], ("stream", n, k, ok))
    return url

def own_failures(n, k):
    check(DownloadManager.download_url(BASE + "/status/404?n=%d" % n) is None, ("404", n, k))
    try:
        DownloadManager.download_url(BASE + "/status/40%d" % n, raise_errors=True)
        check(False, ("no raise", n, k))
    except DownloadManager.HTTPError as e:
        check(e.status == 400 + n, ("status", n, k, e.status))

def own_post(n, k):
    answer = DownloadManager.post_url(BASE + "/echo", data=b"p" * (100 * n + k))
    check(answer is not None and json.loads(answer)["body_len"] == 100 * n + k, ("post", n, k))
"""


def test_threads_and_the_main_thread_download_and_post_synchronously_at_once(mpy, fault):
    # Four threads and the main one, no loop: memory, file (each its own and one shared outfile), stream, a 404,
    # raise_errors, a cut answer resumed, a post. Each call gets exactly its own answer; nothing is left behind.
    r = mpy.run(HEAD + EACH_ROUND + """

def job(n):
    try:
        for k in range(ROUNDS):
            url = own_downloads(n, k, "c")
            check(DownloadManager.download_url(url, outfile="shared.bin") is True, ("shared", n, k))
            own_failures(n, k)
            own_post(n, k)
    except BaseException as e:
        check(False, ("raised", n, repr(e)))
    OUT[n] = True

for n in range(1, THREADS):
    TaskManager.start_new_thread(job, (n,))
job(0)
wait_until(lambda: len(OUT) == THREADS, 60000)
shared = sha256_file("shared.bin")
result(bad=BAD, shared_is_one_of_them=shared in [s for row in SHAS for s in row], listed=DownloadManager.downloads(),
       session=DownloadManager.is_session_active(), fds=fd_count() - FD0)
""", BASE=fault.url(""), THREADS=5, ROUNDS=3,
        SIZES=[[(20000 + 1000 * n + k, 10 * n + k) for k in range(3)] for n in range(5)],
        SHAS=[[sha256_of(20000 + 1000 * n + k, 10 * n + k) for k in range(3)] for n in range(5)], timeout=120)
    v = r.value
    assert v == {"bad": [], "shared_is_one_of_them": True, "listed": [], "session": False, "fds": 0}, v


@pytest.mark.parametrize("port", ["threads", "no_threads"])
def test_a_synchronous_download_an_interrupt_ended_leaves_the_next_call_synchronous(mpy, fault, port):
    # Ctrl-C at the REPL while a download runs: the KeyboardInterrupt leaves asyncio's loop with its task still named
    # as running. The next call at the REPL runs its download and returns its bytes, not a coroutine; on a port
    # without _thread (no lock to take turns with) as well.
    r = mpy.run(HEAD + ("""
import mpos.net.download_manager
mpos.net.download_manager._thread = None  # (as its import finds on a port without threads)
""" if port == "no_threads" else "") + """
def interrupt(percent):
    raise KeyboardInterrupt
try:
    DownloadManager.download_url(URL, progress_callback=interrupt)
except KeyboardInterrupt:
    OUT["interrupted"] = True
OUT["next"] = shown(DownloadManager.download_url(URL))
OUT["post"] = shown(DownloadManager.post_url(ECHO, data=b"abc") is not None)
result(out=OUT, listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", URL=fault.url("/bytes/30000"), ECHO=fault.url("/echo"))
    v = r.value
    assert v == {"out": {"interrupted": True, "next": sha256_of(30000), "post": True}, "listed": [], "fds": 0}, v


def test_a_callback_scheduled_while_this_thread_holds_the_turn_lock_does_not_wait_for_itself(mpy, fault):
    # An LVGL event or timer callback (micropython.schedule runs it between the thread's bytecodes) starts a download
    # while the thread is inside download_url, holding the lock synchronous calls take turns with: under the OS's
    # loop (an app's task downloading) and at the REPL (a synchronous call, before its loop runs). The callback gets
    # the coroutine to run as a task; it used to wait for the lock its own thread held, for ever.
    r = mpy.run(HEAD + """
import micropython
from mpos.net import download_manager
scheduled = []  # the callbacks' coroutines
def button_pressed(_):
    scheduled.append(DownloadManager.download_url(B))
    scheduled.append(answered(DownloadManager.post_url(ECHO, data=b"installed")))
async def answered(post):
    return await post is not None
real_loop_thread = TaskManager.loop_thread
def loop_thread():  # asked under the lock: a timer fires now, its callback runs at the next check of the VM
    if download_manager._running_lock.locked():
        micropython.schedule(button_pressed, None)
    return real_loop_thread()
TaskManager.loop_thread = loop_thread

async def app():
    OUT["app"] = shown(await DownloadManager.download_url(A))
    OUT["under_the_loop"] = await the_callbacks_tasks()
    TaskManager.stop()

async def the_callbacks_tasks():
    got = []
    while scheduled:
        got.append(shown(await TaskManager.create_task(scheduled.pop(0))))
    return got

TaskManager.create_task(app())
TaskManager.start()
OUT["repl"] = shown(DownloadManager.download_url(A))
TaskManager.loop_thread = real_loop_thread
OUT["at_the_repl"] = asyncio.run(the_callbacks_tasks())
asyncio.run(DownloadManager.close_session())
result(out=OUT, listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", A=fault.url("/bytes/30000"), B=fault.url("/bytes/20000?seed=1"), ECHO=fault.url("/echo"), timeout=20)
    v = r.value
    callbacks = [sha256_of(20000, 1), True] * 2  # (the lock is taken twice per call: to tell where it runs, to run)
    assert v == {"out": {"app": sha256_of(30000), "under_the_loop": callbacks, "repl": sha256_of(30000),
                         "at_the_repl": callbacks}, "listed": [], "fds": 0}, v


def test_a_callback_scheduled_while_a_download_holds_the_admission_lock_reads_the_session_state(mpy, fault):
    # A status bar's LVGL timer asks is_session_active() while the thread's download is inside admission's lock
    # (taking the session): the callback runs on that thread, so it must not wait for the lock; it used to hang
    r = mpy.run(HEAD + """
import micropython
from mpos.net import admission
said = []
def status_timer(_):
    said.append(type(DownloadManager.is_session_active()).__name__)  # (True or False: which bytecode it came after)
real_shared_session = admission._shared_session
def shared_session():  # called under the lock: a timer fires now, its callback runs at the next check of the VM
    micropython.schedule(status_timer, None)
    return real_shared_session()
admission._shared_session = shared_session
OUT["got"] = shown(DownloadManager.download_url(URL))
result(out=OUT, said=said, listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", URL=fault.url("/bytes/1000"), timeout=20)
    v = r.value
    assert v == {"out": {"got": sha256_of(1000)}, "said": ["bool"], "listed": [], "fds": 0}, v


def test_start_while_a_threads_synchronous_download_runs_the_loop_waits_for_it_to_end(mpy, fault):
    # No loop ran when the thread's call came: its call runs asyncio's loop. TaskManager.start() comes meanwhile (an
    # OS that boots while an app's thread downloads): it begins its loop only once that call ended (two threads
    # running asyncio's one queue crashed the interpreter, or failed the download with a KeyError out of the poller).
    # A download named in the thread's callback meanwhile is its loop's coroutine (not handed to start(), which waits
    # for that very loop); the thread's next call is handed to start()'s loop.
    r = mpy.run(HEAD + """
def progress(percent):
    if "started" in OUT:
        return
    OUT["started"] = True
    wait_until(lambda: TaskManager.loop_thread() is not None)  # start() came
    time.sleep_ms(50)  # (and went on, to its loop or to its wait)
    nested = DownloadManager.download_url(B)
    OUT["nested"] = type(nested).__name__
    nested.close()

def worker():
    try:
        OUT["first"] = shown(DownloadManager.download_url(A, progress_callback=progress))
        OUT["loop_when_done"] = TaskManager.loop_thread() is not None
        OUT["second"] = shown(DownloadManager.download_url(B))
    except BaseException as e:
        OUT["error"] = repr(e)

async def stop_when_served():
    while "second" not in OUT and "error" not in OUT:
        await asyncio.sleep_ms(5)
    TaskManager.stop()

TaskManager.start_new_thread(worker)
wait_until(lambda: "started" in OUT)
TaskManager.create_task(stop_when_served())
TaskManager.start()
asyncio.run(DownloadManager.close_session())
result(out=OUT, listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", A=fault.url("/bytes/200000?trickle=1"), B=fault.url("/bytes/30000?seed=1"))
    v = r.value
    assert v == {"out": {"started": True, "nested": "generator", "first": sha256_of(200000), "loop_when_done": True,
                         "second": sha256_of(30000, 1)}, "listed": [], "fds": 0}, v


def test_stop_while_a_thread_waits_ends_its_download_before_the_thread_hears_of_it(mpy, fault):
    # The thread gets its RuntimeError as stop() ends the loop, and by then its download is over: no longer listed,
    # its .part closed, nothing running on to finish later behind its back. After start() again, its new try at the
    # same outfile is served (not refused as "another download writes it") and the file is that try's.
    r = mpy.run(HEAD + """
def stop_at_once(percent):
    TaskManager.stop()

def worker():
    wait_for_the_loop()
    try:
        OUT["first"] = DownloadManager.download_url(SLOW, outfile="x.bin", progress_callback=stop_at_once)
    except RuntimeError as e:
        OUT["first"] = str(e)
    OUT["listed_when_told"] = DownloadManager.downloads()
    wait_until(lambda: "restarted" in OUT)
    wait_for_the_loop()
    try:
        OUT["again"] = DownloadManager.download_url(SMALL, outfile="x.bin", raise_errors=True)
    except Exception as e:
        OUT["again"] = repr(e)
    TaskManager.stop()

TaskManager.start_new_thread(worker)
TaskManager.start()
wait_until(lambda: "listed_when_told" in OUT)
OUT["file_after_stop"] = size("x.bin")
OUT["restarted"] = True
TaskManager.start()  # (returns once the thread's second stop() came)
wait_until(lambda: "again" in OUT)
asyncio.run(DownloadManager.close_session())
result(out=OUT, file=sha256_file("x.bin"), listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", SLOW=fault.url("/bytes/300000?trickle=1"), SMALL=fault.url("/bytes/1000"))
    v = r.value
    assert v["out"] == {"first": "the event loop stopped while it ran this", "listed_when_told": [],
                        "file_after_stop": -1, "restarted": True, "again": True}, v
    assert (v["file"], v["listed"], v["fds"]) == (sha256_of(1000), [], 0), v


def test_a_handover_in_a_full_heap_waits_for_the_next_turn_and_the_loop_goes_on(mpy, fault):
    # The loop's thread has no heap when a thread's download comes (micropython.heap_lock counts per thread): the
    # task that would run it can't be made. The loop goes on (start() is the OS's), the download waits in the
    # handover, and runs once the heap is back; the thread gets its bytes.
    r = mpy.run(HEAD + """
import micropython
go = [None]

def worker():
    wait_until(lambda: go[0])
    try:
        OUT["got"] = shown(DownloadManager.download_url(URL))
    except BaseException as e:
        OUT["got"] = repr(e)

async def no_heap_for_a_while():
    micropython.heap_lock()
    go[0] = True
    while not TaskManager._handed:  # (the thread handed its download over)
        await asyncio.sleep_ms(1)
    for _ in range(30):  # a few of the loop's idle turns find no heap
        await asyncio.sleep_ms(1)
    micropython.heap_unlock()

async def stopper():
    while "got" not in OUT:
        await asyncio.sleep_ms(5)
    TaskManager.stop()

TaskManager.start_new_thread(worker)
TaskManager.create_task(no_heap_for_a_while())
TaskManager.create_task(stopper())
try:
    TaskManager.start()
except BaseException as e:
    while micropython.heap_unlock():
        pass
    OUT["start"] = repr(e)
wait_until(lambda: "got" in OUT)
result(**OUT)
""", URL=fault.url("/bytes/5000"))
    assert r.value == {"got": sha256_of(5000)}, r.value


def test_stop_before_the_loop_took_a_threads_download_answers_it_and_runs_none_of_it(mpy, fault):
    # stop() comes between the thread's handover and the loop's turn that would start it: the thread hears at once,
    # its download never starts (no request, no file), and after start() again the thread's next call is served.
    r = mpy.run(HEAD + """
async def stop_once_handed():
    while not TaskManager._handed:
        await asyncio.sleep_ms(0)
    TaskManager.stop()

def worker():
    wait_for_the_loop()
    try:
        OUT["first"] = DownloadManager.download_url(URL, outfile="y.bin")
    except RuntimeError as e:
        OUT["first"] = str(e)
    wait_until(lambda: "restarted" in OUT)
    wait_for_the_loop()
    OUT["again"] = shown(DownloadManager.download_url(URL))
    TaskManager.stop()

TaskManager.start_new_thread(worker)
TaskManager.create_task(stop_once_handed())
TaskManager.start()
wait_until(lambda: "first" in OUT)
OUT["file"] = (size("y.bin"), size("y.bin.part"))
OUT["restarted"] = True
TaskManager.start()
asyncio.run(DownloadManager.close_session())
result(out=OUT, listed=DownloadManager.downloads(), fds=fd_count() - FD0)
""", URL=fault.url("/bytes/300000?trickle=1"))
    v = r.value
    assert v["out"].pop("first") in ("the event loop stopped before it ran this",
                                     "the event loop stopped while it ran this"), v  # (which turn came first)
    assert v == {"out": {"file": [-1, -1], "restarted": True, "again": sha256_of(300000)}, "listed": [], "fds": 0}, v


def test_threads_beside_a_busy_loop_each_get_their_own_result_and_leave_nothing(mpy, fault, ws_aiohttp):
    # Six threads hand downloads and posts of every mode over (their own and one shared outfile, cuts resumed,
    # failures both ways, a callback that raises, a wait_for that times out) while the loop runs downloads and
    # a websocket echo of its own. Every answer is the thread's own, exact; at the end nothing is listed, no task
    # is left but the idle session's closer, and once the session closes every descriptor is back.
    r = mpy.run(HEAD + EACH_ROUND + """
done = []

def job(n):
    try:
        wait_for_the_loop()
        for k in range(ROUNDS):
            url = own_downloads(n, k, "t")
            try:
                ok = DownloadManager.download_url(url, outfile="shared.bin", raise_errors=True)
            except DownloadManager.LocalFileError:
                ok = "another writes it"
            check(ok in (True, "another writes it"), ("shared", n, k, ok))
            own_failures(n, k)
            cut = DownloadManager.download_url(url + "&truncate=5000&norange=1&times=9&key=x%d_%d" % (n, k), tries=1)
            check(cut is None, ("cut", n, k))
            def refuse(percent, n=n, k=k):
                raise ValueError((n, k))
            try:
                DownloadManager.download_url(url, outfile="own%d.bin" % n, progress_callback=refuse)
                check(False, ("callback", n, k))
            except ValueError as e:
                check(e.args[0] == (n, k), ("callback's", n, k, e.args))
            async def timed():
                return await TaskManager.wait_for(DownloadManager.download_url(url + "&rate=20000",
                                                                               outfile="own%d.bin" % n), 0.05)
            try:
                TaskManager.run_from_thread(timed())
                check(False, ("timed", n, k))
            except asyncio.TimeoutError:
                pass
            check(sha256_file("own%d.bin" % n) == SHAS[n][k], ("kept", n, k))  # a failed try left the good file
            own_post(n, k)
    except BaseException as e:
        check(False, ("raised", n, repr(e)))
    done.append(n)

async def loop_downloads():
    k = 0
    while len(done) < THREADS:
        data = await DownloadManager.download_url(BASE + "/bytes/30000?seed=%d" % (900 + k % 3))
        check(shown(data) == LOOP_SHAS[k % 3], ("loop", k))
        k += 1

async def loop_websocket():
    async with ws_session() as session:
        async with session.ws_connect(WS) as ws:
            k = 0
            while len(done) < THREADS:
                message = pattern(1000 + k)
                await ws.send_bytes(message)
                check((await ws.receive()).data == message, ("ws", k))
                k += 1

async def main():
    await asyncio.gather(loop_downloads(), loop_websocket())
    TaskManager.stop()

for n in range(THREADS):
    TaskManager.start_new_thread(job, (n,))
TaskManager.create_task(main())
TaskManager.start()
left = [t for t in TaskManager.list_tasks()]
listed = DownloadManager.downloads()
asyncio.run(DownloadManager.close_session())
result(bad=BAD, listed=listed, tasks_left=len(left), fds=fd_count() - FD0)
""", heapsize="8M", BASE=fault.url(""), WS=ws_aiohttp.url("/echo"), THREADS=6, ROUNDS=2,
        SIZES=[[(20000 + 1000 * n + k, 10 * n + k) for k in range(2)] for n in range(6)],
        SHAS=[[sha256_of(20000 + 1000 * n + k, 10 * n + k) for k in range(2)] for n in range(6)],
        LOOP_SHAS=[sha256_of(30000, 900 + k) for k in range(3)], timeout=180)
    v = r.value
    assert v == {"bad": [], "listed": [], "tasks_left": 1, "fds": 0}, v


def test_aiohttps_getattr_answers_while_a_load_in_another_thread_remakes_its_globals_table(mpy):
    # A first use stores what it loaded in aiohttp's globals, and MicroPython's import adds each submodule there, while
    # other threads' names go through aiohttp's __getattr__. A dict that grows full is made anew, key by key: on a
    # port without a global interpreter lock (unix) a thread reading it meanwhile misses keys it holds. Here the keys
    # the load adds hold it half made (their __hash__, which the remaking calls, waits for a call of __getattr__ in
    # another thread): that call answers all the same (a thread's download in
    # test_threads_and_the_main_thread_download_and_post_synchronously_at_once failed with "NameError: name '_WHERE'
    # isn't defined" once in about 15 runs).
    r = mpy.run(HEAD + """
import aiohttp
from aiohttp.loading import one_at_a_time
answer = aiohttp.__getattr__  # what MicroPython calls for a name not in aiohttp's globals
CALLS = [0]
BAD = []

class Key:
    def __hash__(self):  # (called again for each key each time the table is made anew)
        called = CALLS[0]
        wait_until(lambda: CALLS[0] >= called + 2)  # (a whole call of __getattr__ meanwhile)
        return id(self) >> 3

def call_it():
    while "grown" not in OUT:
        for name in ("NoSuchName", "__all__"):
            try:
                answer(name)
            except AttributeError:
                pass
            except Exception as e:
                if len(BAD) < 3:
                    BAD.append(repr(e))
        CALLS[0] += 1
    OUT["stopped"] = True

def grow(package_globals):  # as a load does, many times: the table is made anew at each size it outgrows
    keys = [Key() for _ in range(40)]
    for key in keys:
        package_globals[key] = None
    for key in keys:
        del package_globals[key]

_thread.start_new_thread(call_it, ())
one_at_a_time(grow, aiohttp.__dict__)
OUT["grown"] = True
wait_until(lambda: "stopped" in OUT)
result(bad=BAD, all=answer("__all__") == aiohttp.__all__)
""")
    assert r.value == {"bad": [], "all": True}, r.value
