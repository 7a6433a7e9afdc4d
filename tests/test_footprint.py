"""What an app pays in heap, and when: `import aiohttp` and `from mpos import DownloadManager` load the client and the
download classes only when first used, and the exception classes only when an error is named (docs/performance.md
has the figures)."""
import hashlib
from urllib.parse import quote

import pytest

from tools.testservers import sha256_of

CLIENT_MODULES = ["aiohttp.client", "aiohttp.connection", "aiohttp.errors", "aiohttp.response", "aiohttp.url",
                  "mpos.net.download"]
OFF_THE_PLAIN_PATH = ["aiohttp.location", "aiohttp.form", "aiohttp.chunkext",  # Location, params=/data=, ";ext",
                      "aiohttp.wire"]  # https


def test_importing_loads_the_client_and_the_download_classes_on_first_use(mpy, fault):
    r = mpy.run("""
import sys
from mpos import DownloadManager
import aiohttp
def loaded():
    return [name for name in WATCHED if name in sys.modules]
result(after_import=loaded())
session_class = aiohttp.ClientSession
from aiohttp import split_url
result(after_a_name=loaded(), same=session_class is aiohttp.ClientSession, split=split_url("http://h:81/p"),
       module=aiohttp.url.__name__)
try:
    aiohttp.NoSuchName
    missing = None
except AttributeError as e:
    missing = str(e)
result(missing=missing)
data = DownloadManager.download_url(URL)
result(size=len(data), after_a_download=loaded())
""", URL=fault.url("/bytes/1000"), WATCHED=CLIENT_MODULES + OFF_THE_PLAIN_PATH)
    after_import, after_a_name, missing, download = r.results
    assert after_import == {"after_import": []}
    assert after_a_name == {"after_a_name": ["aiohttp.client", "aiohttp.connection", "aiohttp.errors",
                                             "aiohttp.response", "aiohttp.url"],
                            "same": True, "split": ["http", "h", 81, "/p"], "module": "aiohttp.url"}
    assert missing == {"missing": "NoSuchName"}
    assert download == {"size": 1000, "after_a_download": CLIENT_MODULES}



def test_task_manager_loads_when_named_not_with_a_download(mpy, fault):
    r = mpy.run("""
import sys
import mpos
from mpos import DownloadManager
ok = DownloadManager.download_url(URL, outfile=OUT)  # no loop running: the session closes at the end
result(ok=ok, loaded="mpos.task_manager" in sys.modules)
from mpos import TaskManager
from mpos import net, task_manager
from mpos import *
try:
    from mpos import no_such_thing
    missing = None
except (AttributeError, ImportError) as e:
    missing = type(e).__name__
result(same=TaskManager is task_manager.TaskManager is mpos.TaskManager, net=net.__name__,
       star=DownloadManager.__name__, missing=missing, has=hasattr(mpos, "no_such_thing"))
""", URL=fault.url("/bytes/3000"), OUT=str(mpy.tmpdir / "out.bin"))
    download, names = r.results
    assert download == {"ok": True, "loaded": False}
    assert names == {"same": True, "net": "mpos.net", "star": "DownloadManager", "missing": "AttributeError",
                     "has": False}


def test_the_code_that_runs_a_synchronous_call_loads_with_the_first_one(mpy, fault):
    # An app under the OS's event loop awaits its downloads: the loop-running code of a call from the REPL is not
    # on its heap
    r = mpy.run("""
import asyncio, sys
from mpos import DownloadManager

async def app():
    return await DownloadManager.download_url(URL)

result(awaited=len(asyncio.run(app())), loaded="mpos.net.synchronous" in sys.modules)
result(called=len(DownloadManager.download_url(URL)), loaded="mpos.net.synchronous" in sys.modules)
""", URL=fault.url("/bytes/3000"))
    assert r.results == [{"awaited": 3000, "loaded": False}, {"called": 3000, "loaded": True}]


def test_a_download_that_ends_without_heap_for_task_manager_closes_its_session(mpy, fault):
    # Under a running loop the idle session is closed later by a TaskManager task; TaskManager loads then. Here its
    # module cannot load (a full heap): the download still ends as it did, and the session is closed at once.
    r = mpy.run("""
import sys, asyncio
class NoHeap:
    def __getattr__(self, name):
        raise MemoryError("memory allocation failed")
sys.modules["mpos.task_manager"] = NoHeap()
from mpos import DownloadManager
async def main():
    ok = await DownloadManager.download_url(URL, outfile=OUT)
    result(ok=ok, active=DownloadManager.is_session_active(), sha=sha256_file(OUT))
asyncio.run(main())
""", URL=fault.url("/bytes/3000"), OUT=str(mpy.tmpdir / "out.bin"))
    assert r.value == {"ok": True, "active": False, "sha": sha256_of(3000)}

MADE = """
import aiohttp
from aiohttp import errors
def made():
    return len(errors._made or ())  # the table of classes, once made
"""


def test_a_download_that_goes_well_makes_no_error_class(mpy, fault):
    r = mpy.run(MADE + """
from mpos import DownloadManager
ok = DownloadManager.download_url(URL, outfile=OUT)
result(ok=ok, made=made())
""", URL=fault.url("/bytes/100000?chunked=1&chunks=4096"), OUT=str(mpy.tmpdir / "out.bin"))
    assert r.value == {"ok": True, "made": 0}


def test_the_error_classes_are_made_once_and_catch_what_the_client_raises(mpy, fault):
    r = mpy.run(MADE + """
import asyncio
async def main():
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(URL) as resp:
                await resp.read()
            caught = None
        except aiohttp.ClientPayloadError as e:  # the first name: all are made here
            caught = type(e).__name__
    payload = aiohttp.ClientPayloadError
    from aiohttp.errors import ClientError
    result(caught=caught, made=made(), same=payload is aiohttp.ClientPayloadError is errors.ClientPayloadError,
           kin=issubclass(payload, ClientError), invalid_is_value_error=issubclass(errors.InvalidURL, ValueError))
asyncio.run(main())
""", URL=fault.url("/bytes/5000?truncate=2000"))
    assert r.value == {"caught": "ClientPayloadError", "made": 20, "same": True, "kin": True,
                       "invalid_is_value_error": True}


def test_error_classes_cut_short_by_a_full_heap_are_made_whole_later(mpy):
    # With this little heap left, making the twenty classes runs out part way: none are published, and the next
    # use makes them all, one set that catches what it raises
    outcomes = []
    for free in (600, 1800, 3600, 7200, 14400, 28800):
        r = mpy.run(MADE + """
def first_try():
    ballast = leave_free(FREE)
    try:
        errors.ClientError
        first = "made"
    except MemoryError:
        first = "MemoryError"
    ballast = None  # (its slot overwritten: a frame left by the failed try must not keep it alive)
    return first
first = first_try()
heap_in_use()  # overwrites the dead stack, where a word left by the failed try would keep the ballast alive
part = made()  # (counting names makes none)
try:
    raise errors.TooManyRedirects(302, "loop")
except errors.ClientResponseError as e:
    caught = e.status
result(first=first, part=part, made=made(), caught=caught,
       chain=issubclass(errors.TooManyRedirects, errors.ClientError))
""", FREE=free, heapsize="80k")  # (room for the largest FREE beside testlib and the client, in one piece)
        outcomes.append(r.value)
    for outcome in outcomes:
        assert outcome["made"] == 20 and outcome["caught"] == 302 and outcome["chain"], outcomes
        assert outcome["part"] == (20 if outcome["first"] == "made" else 0), outcomes
    assert {o["first"] for o in outcomes} == {"made", "MemoryError"}, outcomes


def test_threads_that_name_an_error_at_once_get_one_set_of_classes(mpy):
    # The network drops under every thread at once: each names an error class for the first time together
    runs = [mpy.run(MADE + """
import _thread, time
go = False
got = []
def name_one():
    while not go:
        time.sleep_ms(0)  # (a yield, not a spin: four spinning threads starved the main one on a loaded machine)
    got.append(errors.ClientResponseError)
for _ in range(4):
    _thread.start_new_thread(name_one, ())
time.sleep_ms(20)
go = True
while len(got) < 4:
    time.sleep_ms(1)
try:
    raise got[0](500, "from the first thread's class")
except errors.ClientError:
    caught = True
result(sets=len(set(id(c) for c in got)), caught=caught)
""", timeout=20).value for _ in range(8)]
    assert runs == [{"sets": 1, "caught": True}] * 8


def test_star_imports_load_every_name(mpy):
    r = mpy.run("""
from aiohttp import *
from aiohttp.errors import *
result(session=ClientSession.__name__, ws=WSMsgType.TEXT, split=split_url("http://h/p"),
       error=issubclass(TooManyRedirects, ClientError), url_error=issubclass(InvalidURL, ValueError))
""")
    assert r.value == {"session": "ClientSession", "ws": 1, "split": ["http", "h", 80, "/p"], "error": True,
                       "url_error": True}



FULL_HEAP_AT_READ = MADE + """
from aiohttp import connection
real_recv = connection.Connection.recv
reads = []
def recv_in_a_full_heap(self, view, once=False):
    reads.append(True)
    if len(reads) == FAILING_READ:
        raise MemoryError("memory allocation failed, allocating 168 bytes")
    return (yield from real_recv(self, view, once))
connection.Connection.recv = recv_in_a_full_heap
"""


def test_a_download_that_runs_out_of_heap_makes_no_error_class(mpy, fault):
    # Making the client's thirteen error classes takes about 3 KB: a heap that just failed has none to spare, and a
    # class test on the way out (is it a ClientConnectionError?) would make them only to say no
    r = mpy.run(FULL_HEAP_AT_READ + """
from mpos import DownloadManager
first = DownloadManager.download_url(URL)
made_then = made()
again = DownloadManager.download_url(URL)
result(first=first, made=made_then, again=sha256(again))
""", URL=fault.url("/bytes/5000"), FAILING_READ=1)  # the head's first read
    assert r.value == {"first": None, "made": 0, "again": sha256_of(5000)}
    assert "failed (memory)" in r.stderr


def test_a_body_read_that_runs_out_of_heap_makes_no_error_class(mpy, fault):
    r = mpy.run(FULL_HEAP_AT_READ + """
import asyncio
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            buf = bytearray(1000)
            try:
                while await resp.content.readinto(buf):
                    pass
                outcome = "read whole"
            except MemoryError:
                outcome = "MemoryError"
    result(outcome=outcome, reads=len(reads), made=made())
asyncio.run(main())
""", URL=fault.url("/bytes/200000"), FAILING_READ=3)  # a read that waited, inside the body
    assert r.value == {"outcome": "MemoryError", "reads": 3, "made": 0}

def test_a_cancelled_request_makes_no_error_class(mpy, fault):
    # An app's wait_for gives up while the head is awaited, and again while the body is read
    r = mpy.run(MADE + """
import asyncio
async def main():
    async with aiohttp.ClientSession() as session:
        async def head():
            async with session.get(DELAYED) as resp:
                await resp.read()
        async def body():
            async with session.get(STALLED) as resp:
                await resp.read()
        outcomes = []
        for request in (head, body):
            try:
                await asyncio.wait_for(request(), 0.3)
            except asyncio.TimeoutError:
                outcomes.append("timeout")
        result(outcomes=outcomes, made=made())
asyncio.run(main())
""", DELAYED=fault.url("/bytes/100?delay=2"), STALLED=fault.url("/bytes/5000?stall=1000&stall_s=2"))
    assert r.value == {"outcomes": ["timeout", "timeout"], "made": 0}


def test_an_app_error_or_a_question_about_one_makes_no_error_class(mpy, fault):
    # A chunk callback that raises, and is_network_error() asked about errors that are none of the client's: no
    # class test along the way makes the client's thirteen classes only to say no
    r = mpy.run(MADE + """
from mpos import DownloadManager
def refuse(chunk):
    raise ValueError("the app's own")
try:
    DownloadManager.download_url(URL, chunk_callback=refuse)
    raised = None
except ValueError as e:
    raised = str(e)
answers = [DownloadManager.is_network_error(e) for e in (OSError(errno.ECONNRESET), ValueError("x"))]
result(raised=raised, answers=answers, made=made())
""", URL=fault.url("/bytes/5000"))
    assert r.value == {"raised": "the app's own", "answers": [True, False], "made": 0}


def test_a_callback_scheduled_while_a_module_loads_does_not_wait_for_itself(mpy):
    # micropython.schedule runs a callback between the bytecodes of whatever the thread does, which may be a load
    # under the loading lock; the callback names a lazy name, which takes the same lock
    r = mpy.run("""
import micropython
import aiohttp
from aiohttp import loading
said = []
def handler(_):
    said.append(aiohttp.split_url("http://h/"))
def a_load():  # stands for an import under the lock: the callback comes while it runs
    micropython.schedule(handler, None)
    for _ in range(1000):  # (a scheduled callback runs at a backward jump)
        if said:
            break
    return loading._lock.locked()
held = loading.one_at_a_time(a_load)
result(held=held, said=said)
""", timeout=20)
    assert r.value == {"held": True, "said": [["http", "h", 80, "/"]]}


def test_downloads_can_be_listed_from_another_thread_while_the_first_download_loads(mpy, fault):
    r = mpy.run("""
import _thread, time
from mpos import DownloadManager
errors = []
most = [0]
done = []
def lister():
    try:
        while not done:
            most[0] = max(most[0], len(DownloadManager.downloads()))
            time.sleep_us(50)  # (a busy loop's garbage would crowd the download's heap)
    except Exception as e:
        errors.append(repr(e))
    done.append("lister")
_thread.start_new_thread(lister, ())
time.sleep_ms(5)
ok = DownloadManager.download_url(URL, outfile=OUT)
done.append("download")
while len(done) < 2:
    time.sleep_ms(1)
result(ok=ok, errors=errors, listed=most[0])
""", URL=fault.url("/bytes/200000?rate=400000"), OUT=str(mpy.tmpdir / "out.bin"), timeout=30)
    assert r.value == {"ok": True, "errors": [], "listed": 1}


@pytest.mark.parametrize("free", range(1500, 4500, 100))
def test_a_first_download_without_heap_for_the_client_fails_as_documented(mpy, fault, free):
    # The client and download.py load with the first download: in a heap too full for them, that download ends as
    # any download does that runs out of memory (False, or OutOfMemory with raise_errors), and a later one works.
    # With so little left the failure is said without a coroutine or a loop made for it: a MemoryError making one
    # came out of download_url (at most FREE values, frozen)
    r = mpy.run("""
from mpos import DownloadManager
def first(**kw):
    ballast = leave_free(FREE)
    try:
        return DownloadManager.download_url(URL, outfile=OUT, **kw)
    except DownloadManager.OutOfMemory as e:
        return e.reason
outcomes = []
for kw in ({}, {"raise_errors": True}):
    outcomes.append(first(**kw))
    heap_in_use()  # overwrites the dead stack, where a word left by the failed try would keep its ballast alive
ok = DownloadManager.download_url(URL, outfile=OUT)
result(outcomes=outcomes, ok=ok, sha=sha256_file(OUT))
""", URL=fault.url("/bytes/5000"), OUT=str(mpy.tmpdir / "out.bin"), FREE=free, heapsize="256k")
    assert r.value == {"outcomes": [False, "memory"], "ok": True, "sha": sha256_of(5000)}
    assert r.stderr.count("failed (memory): out of memory") == 2, r.stderr  # each logged once, heap or none


# What aiohttp loads on first use, as the library names it: its public names, and its modules (a function's
# `from . import wire`), both through the package's __getattr__
FIRST_USE_LOADS = ["BasicAuth"] + ("client connection helpers errors response url location poll websocket form upload "
                                   "chunkext compression streams charset utf8 wire client_exceptions").split()


@pytest.mark.parametrize("name", FIRST_USE_LOADS)
def test_a_module_whose_load_ran_out_of_heap_loads_later(mpy, name):
    # MicroPython names a module in sys.modules before it makes it: a MemoryError in between left the name with no
    # module, the next import returned nothing, and the getattr on it segfaulted (at 700-960 bytes free a first
    # download did so, frozen; a first redirect, gzip body or https connection could too). The library's loads go
    # through aiohttp/loading.py, which forgets such names.
    r = mpy.run("""
import asyncio, gc, sys  # (asyncio is the app's, loaded before: a MemoryError inside its import leaves it broken)
import aiohttp

for i in range(12):  # room in sys.modules' table: naming the module needs no heap, making it does
    sys.modules["pad%d" % i] = None
for i in range(12):
    del sys.modules["pad%d" % i]

def load(leave):
    gc.collect()
    ballast = leave_free(leave)
    try:
        return getattr(aiohttp, NAME)
    except MemoryError:
        return None

def unmade():
    return [name for name in sys.modules if sys.modules.get(name) is None]

tries = []
left_unmade = []
leave = 16
while not tries or not tries[-1]:
    tries.append(load(leave) is not None)
    heap_in_use()  # overwrites the dead stack, where a word left by the failed try would keep its ballast alive
    left_unmade += unmade()
    leave += 16 if leave < 1600 else leave // 8
loaded = getattr(aiohttp, NAME)
result(tries=len(tries), failed=tries.count(False), left_unmade=left_unmade, loaded=loaded is not None,
       encoded=aiohttp.BasicAuth("a", "b").encode())
""", NAME=name, heapsize="512k", compiled=True)  # (compiling a module from source would need far more)
    assert r.value["failed"] > 2 and r.value["tries"] == r.value["failed"] + 1, r.value  # (it swept: loads failed)
    assert r.value["left_unmade"] == [] and r.value["loaded"], r.value
    assert r.value["encoded"] == "Basic YTpi", r.value


def test_aiohttp_loads_its_modules_on_first_use_only_through_its_package():
    # A load that bypasses aiohttp/loading.py can leave a half-made module after a MemoryError (see above): a function
    # loads a sibling module as `from . import wire` (the package's __getattr__), never `from .wire import Wire`
    import re
    from tools.mpy import LIB

    bypassing = []
    for path in sorted((LIB / "aiohttp").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s+from \.\w+ import", line):
                bypassing.append("%s:%d: %s" % (path.name, number, line.strip()))
    assert bypassing == []
    undeclared = [module.stem for module in (LIB / "aiohttp").glob("*.py")
                  if module.stem != "__init__" and module.stem not in FIRST_USE_LOADS + ["loading"]]
    assert undeclared == []  # (each module is in the sweep above: its load goes through the package)


def test_a_first_download_with_no_file_descriptor_to_load_the_client_fails_as_documented(mpy, fault):
    # Run from files (the desktop simulator), the first download reads the client's modules: with every descriptor
    # taken that is an OSError (EMFILE), which ends the download as documented (None, or a NetworkError with
    # raise_errors: descriptors come back), not a bare OSError out of download_url; a later one works
    r = mpy.run("""
from mpos import DownloadManager
def first(**kw):
    held = []
    try:
        while True:
            held.append(open(OUT + ".x", "wb"))
    except OSError:
        pass
    try:
        return DownloadManager.download_url(URL, **kw)
    except DownloadManager.DownloadError as e:
        return e.reason
    except Exception as e:
        return repr(e)
    finally:
        for f in held:
            f.close()
outcomes = [first(), first(raise_errors=True)]
result(outcomes=outcomes, sha=sha256(DownloadManager.download_url(URL)))
""", URL=fault.url("/bytes/5000"), OUT=str(mpy.tmpdir / "out.bin"), fds=24)
    assert r.value == {"outcomes": [None, "network"], "sha": sha256_of(5000)}, r.value
    assert r.stderr.count("failed (network)") == 2, r.stderr  # each logged once


# Each step a download takes can meet a full heap; micropython.heap_lock() makes it meet one there, every time
WITHOUT_HEAP_IN = """
import micropython
from mpos import DownloadManager
from mpos.net import admission, download
owner = {"admission": admission, "Download": download.Download}[OWNER]
real = getattr(owner, NAME)
def without_heap(first, second=None, third=None):  # (a call with *args would allocate)
    micropython.heap_lock()
    try:
        return real(first) if second is None else real(first, second, third)
    finally:
        micropython.heap_unlock()
def first(**kw):
    try:
        return DownloadManager.download_url(URL, outfile=OUT, **kw)
    except DownloadManager.DownloadError as e:
        return e.reason
    except Exception as e:
        return repr(e)
with open(OUT, "wb") as f:
    f.write(b"old")
fds = fd_count()
setattr(owner, NAME, without_heap)
outcomes = [first(), first(raise_errors=True)]
setattr(owner, NAME, real)
left = [fd_count() - fds, DownloadManager.downloads(), DownloadManager.is_session_active(), sha256_file(OUT)]
ok = DownloadManager.download_url(GOOD, outfile=OUT)
result(outcomes=outcomes, left=left, ok=ok, sha=sha256_file(OUT), part=exists(OUT + ".part"))
"""


@pytest.mark.parametrize("owner, name, path, reason", [
    ("admission", "acquire_session", "/bytes/3000", "memory"),  # the shared session, made by the first download
    ("Download", "run", "/bytes/3000", "memory"),  # the download's coroutine, the largest frame it makes
    ("Download", "log", "/status/404", "http"),  # the line that tells why it failed
    ("Download", "close", "/status/404", "http"),  # its cleanup, which looks for an empty .part to remove
], ids=["session", "coroutine", "log line", "cleanup"])
def test_a_full_heap_at_any_step_fails_the_download_as_documented_and_leaves_nothing(mpy, fault, owner, name, path,
                                                                                     reason):
    r = mpy.run(WITHOUT_HEAP_IN, OWNER=owner, NAME=name, URL=fault.url(path), GOOD=fault.url("/bytes/5000"),
                OUT=str(mpy.tmpdir / "out.bin"))
    old = hashlib.sha256(b"old").hexdigest()
    assert r.value == {"outcomes": [False, reason], "left": [0, [], False, old], "ok": True, "sha": sha256_of(5000),
                       "part": False}


def test_a_full_heap_just_after_the_socket_is_made_loses_no_socket(mpy, fault):
    # The unix port's sockets have no finaliser: one that nothing holds stays open for good
    r = mpy.run("""
import micropython, socket
from mpos import DownloadManager
from aiohttp import connection
class SocketThenFullHeap:
    SOCK_STREAM = socket.SOCK_STREAM
    def socket(self, family, kind, proto):
        made = socket.socket(family, kind, proto)
        micropython.heap_lock()
        return made
real_open = connection.Connection.open
def open_in_a_full_heap(self, address):
    connection.socket = SocketThenFullHeap()
    try:
        return real_open(self, address)
    finally:
        micropython.heap_unlock()
        connection.socket = socket
connection.Connection.open = open_in_a_full_heap
fds = fd_count()
data = DownloadManager.download_url(URL)  # whole or None, as the rest of its connect finds heap or not
leaked = fd_count() - fds
connection.Connection.open = real_open
again = DownloadManager.download_url(URL)
result(first=data and sha256(data), leaked=leaked, again=sha256(again))
""", URL=fault.url("/bytes/3000"))
    assert r.value["first"] in (None, sha256_of(3000)), r.value
    assert r.value["leaked"] == 0 and r.value["again"] == sha256_of(3000), r.value


def test_a_download_through_a_redirect_keeps_no_head_of_the_redirect(mpy, fault):
    # aiohttp's resp.history keeps each redirect's head; a download lets them go with its own (a CDN's can be KBs)
    r = mpy.run("""
import gc
from mpos import DownloadManager
held = {}
def halfway(name):
    def progress(percent):
        if percent >= 50 and name not in held:
            gc.collect()
            held[name] = gc.mem_alloc()
    return progress
async def main():
    for name, url in (("warm", REDIRECTED), ("direct", DIRECT), ("redirected", REDIRECTED)):
        ok = await DownloadManager.download_url(url, outfile=name, progress_callback=halfway(name))
        assert ok and sha256_file(name) == SHA
    result(**held)
run(main())
""", DIRECT=fault.url("/bytes/100000?rate=400000"), SHA=sha256_of(100000),
                REDIRECTED=fault.url("/redirect?pad=30&to=" + quote("/bytes/100000?rate=400000", safe="")))
    held = r.value
    assert held["redirected"] - held["direct"] < 1024, held  # the redirect's head: 30 fields of 300 bytes
