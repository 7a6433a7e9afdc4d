"""What an app pays in heap, and when: `import aiohttp` and `from mpos import DownloadManager` load the client and the
download classes only when first used, and the exception classes only when an error is named (docs/performance.md
has the figures)."""

CLIENT_MODULES = ["aiohttp.client", "aiohttp.connection", "aiohttp.errors", "aiohttp.response", "aiohttp.url",
                  "mpos.net.download"]


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
""", URL=fault.url("/bytes/1000"), WATCHED=CLIENT_MODULES)
    after_import, after_a_name, missing, download = r.results
    assert after_import == {"after_import": []}
    assert after_a_name == {"after_a_name": ["aiohttp.client", "aiohttp.connection", "aiohttp.errors",
                                             "aiohttp.response", "aiohttp.url"],
                            "same": True, "split": ["http", "h", 81, "/p"], "module": "aiohttp.url"}
    assert missing == {"missing": "NoSuchName"}
    assert download == {"size": 1000, "after_a_download": CLIENT_MODULES}


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
    assert r.value == {"caught": "ClientPayloadError", "made": 12, "same": True, "kin": True,
                       "invalid_is_value_error": True}


def test_error_classes_cut_short_by_a_full_heap_are_made_whole_later(mpy):
    # With this little heap left, making the twelve classes runs out part way: none are published, and the next
    # use makes them all, one set that catches what it raises
    outcomes = []
    for free in (600, 1800, 3600, 7200):
        r = mpy.run(MADE + """
ballast = leave_free(FREE)
try:
    errors.ClientError
    first = "made"
except MemoryError:
    first = "MemoryError"
ballast = None
part = made()
try:
    raise errors.TooManyRedirects(302, "loop")
except errors.ClientResponseError as e:
    caught = e.status
result(first=first, part=part, made=made(), caught=caught,
       chain=issubclass(errors.TooManyRedirects, errors.ClientError))
""", FREE=free, heapsize="64k")
        outcomes.append(r.value)
    for outcome in outcomes:
        assert outcome["made"] == 12 and outcome["caught"] == 302 and outcome["chain"], outcomes
        assert outcome["part"] == (12 if outcome["first"] == "made" else 0), outcomes
    assert {o["first"] for o in outcomes} == {"made", "MemoryError"}, outcomes


def test_threads_that_name_an_error_at_once_get_one_set_of_classes(mpy):
    # The network drops under every thread at once: each names an error class for the first time together
    runs = [mpy.run(MADE + """
import _thread, time
go = False
got = []
def name_one():
    while not go:
        pass
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
