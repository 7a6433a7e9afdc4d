"""MicroPythonOS's own modules on this library: the OS updater, the App Store, the app installer and the weather app
call DownloadManager here exactly as they do upstream (tests/mpy/os_callers.py restates each call with its keywords,
callback shapes and error handling), on MicroPython against the fault server. Each test checks what reaches the
flash blocks or the installed files, byte for byte, and what the OS code sees.
"""
import hashlib
import io
import json
import shutil
import zipfile

import pytest

from tools.mpy import LIB
from tools.mpy import run as run_on
from tools.testservers import payload, refused_url

FIRMWARE = 150_123  # not a whole number of 4 KB blocks: the last block is padded with erased flash (0xFF)
BLOCK = 4096


def flashed(n, seed=0):
    """sha256 of what the partition must hold after an update to the n-byte firmware /bytes/n serves."""
    return hashlib.sha256(payload(n, seed) + b"\xff" * (-n % BLOCK)).hexdigest()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def ranges(fault):
    """The Range header of every request the server received (None: the whole resource)."""
    return [request.headers.get("range") for request in fault.log]


# What the updater's snippets share: the partition's content and the updater's result, as the test reports them
UPDATE = """
from os_callers import *

def flash_report(flash, **extra):
    extra["written"], extra["holes"] = flash.written()
    extra["blocks"] = len(flash.blocks)
    return extra
"""


# ---------------------------------------------------------------------------------------------------------------
# The OS updater (osupdate_core.UpdateDownloader, UpdateChecker)


def test_an_update_reaches_the_flash_whole_and_in_4_kb_blocks(mpy, fault):
    v = mpy.run(UPDATE + """
download_clock_runs(200)  # a speed report every few chunks instead of every second
async def main():
    flash, screen = FlashPartition(), UpdateScreen()
    outcome = await UpdateDownloader(flash).download_and_install(URL, progress_callback=screen.progress,
                                                                 speed_callback=screen.speed)
    result(**flash_report(flash, outcome=outcome, percents=screen.percents, speeds=screen.speeds,
                          types=sorted(set(type(p).__name__ for p in screen.percents[:-1]))))
run(main())
""", URL=fault.url("/bytes/%d" % FIRMWARE)).value
    blocks = -(-FIRMWARE // BLOCK)
    assert v["outcome"] == {"success": True, "bytes_written": blocks * BLOCK, "error": None, "paused": False}
    assert (v["written"], v["holes"], v["blocks"]) == (flashed(FIRMWARE), [], blocks)
    # DownloadManager's percents are ints, strictly increasing, 100 once at the end; then the updater's own 100.0
    percents = v["percents"]
    assert v["types"] == ["int"] and percents[-2:] == [100, 100.0], v
    assert all(a < b for a, b in zip(percents[:-1], percents[1:-1])), percents
    assert v["speeds"] and all(isinstance(s, int) and s > 0 for s in v["speeds"]), v["speeds"]
    assert ranges(fault) == [None]


def test_an_update_whose_connection_drops_is_resumed_by_the_download_manager(mpy, fault):
    v = mpy.run(UPDATE + """
async def main():
    flash, screen = FlashPartition(), UpdateScreen()
    outcome = await UpdateDownloader(flash).download_and_install(URL, progress_callback=screen.progress)
    result(**flash_report(flash, outcome=outcome, percents=screen.percents))
run(main())
""", URL=fault.url("/bytes/%d?drop=60000&key=update" % FIRMWARE)).value
    assert v["outcome"]["success"] is True, v
    assert (v["written"], v["holes"]) == (flashed(FIRMWARE), [])
    percents = v["percents"][:-1]
    assert all(a < b for a, b in zip(percents, percents[1:])) and percents[-1] == 100, percents
    # the drop never reached the updater (a reset connection may lose what it had not yet handed over)
    first, resumed_at = ranges(fault)
    assert first is None and 0 < int(resumed_at[len("bytes="):-1]) <= 60000, resumed_at
    assert fault.log[1].headers["if-range"] == '"%d-0"' % FIRMWARE


@pytest.mark.parametrize("server", ["honours Range", "ignores Range"])
def test_a_paused_update_continues_from_bytes_written_so_far(mpy, fault, server):
    # DownloadManager gives up where the connection ends early (no reconnects allowed); with raise_errors=True the
    # updater sees a network error, pauses, drops the unfinished block and asks for the rest itself, as after Wi-Fi
    # comes back.
    v = mpy.run(UPDATE + """
DownloadManager.max_reconnects = 0
async def main():
    flash = FlashPartition()
    updater = UpdateDownloader(flash, raise_errors=True)
    paused = await updater.download_and_install(URL)
    error = type(updater.caught).__name__
    screen = UpdateScreen()
    resumed = await updater.download_and_install(URL, progress_callback=screen.progress)
    result(**flash_report(flash, paused=paused, error=error, resumed=resumed, percents=screen.percents))
run(main())
""", URL=fault.url("/bytes/%d?truncate=60000&key=update%s" % (FIRMWARE, "&norange=1" * (server == "ignores Range"))))
    v = v.value
    written = 60000 // BLOCK * BLOCK
    assert v["paused"] == {"success": False, "bytes_written": written, "error": None, "paused": True}
    assert v["error"] == "NetworkError" and v["resumed"]["success"] is True, v
    # the bar goes on from where it stood (the bytes of its Range's start are done), not from 1 %
    assert v["percents"][0] == written * 100 // FIRMWARE and v["percents"][-1] == 100, v["percents"]
    assert (v["written"], v["holes"]) == (flashed(FIRMWARE), [])
    assert ranges(fault) == [None, "bytes=%d-" % written]


def test_without_raise_errors_the_updater_sees_the_documented_false(mpy, fault):
    v = mpy.run(UPDATE + """
DownloadManager.max_reconnects = 0
async def main():
    flash = FlashPartition()
    updater = UpdateDownloader(flash)
    outcome = await updater.download_and_install(URL)
    result(**flash_report(flash, outcome=outcome, caught=repr(updater.caught)))
run(main())
""", URL=fault.url("/bytes/%d?truncate=60000" % FIRMWARE)).value
    written = 60000 // BLOCK * BLOCK
    assert v["outcome"] == {"success": False, "bytes_written": written, "error": "Download failed", "paused": False}
    assert v["caught"] == "None" and v["holes"] == [] and v["blocks"] == written // BLOCK
    assert v["written"] == sha(payload(FIRMWARE)[:written])


@pytest.mark.parametrize("raise_errors", [False, True])
def test_cancelling_from_the_chunk_callback_stops_the_download_at_once(mpy, fault, raise_errors):
    v = mpy.run(UPDATE + """
from testlib import fd_count
async def main():
    fds = fd_count()
    flash = FlashPartition()
    updater = UpdateDownloader(flash, raise_errors=RAISE_ERRORS)
    def should_continue():  # the user taps Cancel once two blocks are flashed
        return updater.bytes_written_so_far < 2 * 4096
    outcome = await updater.download_and_install(URL, should_continue_callback=should_continue)
    same = updater.caught is updater.cancel_error
    await TaskManager.sleep_ms(300)  # time enough for a retry, had there been one
    await DownloadManager.close_session()
    result(**flash_report(flash, outcome=outcome, same=same, left=DownloadManager.downloads(),
                          fds=fd_count() - fds))
run(main())
""", URL=fault.url("/bytes/%d" % FIRMWARE), RAISE_ERRORS=raise_errors).value
    # the chunks accepted before Cancel: two whole blocks flashed, the start of the third never
    assert v["outcome"] == {"success": False, "bytes_written": 2 * BLOCK, "error": "Download cancelled by user",
                            "paused": False}
    assert v["same"] is True
    assert v["written"] == sha(payload(FIRMWARE)[: 2 * BLOCK]) and v["holes"] == []
    assert (v["left"], v["fds"]) == ([], 0)
    assert ranges(fault) == [None]


@pytest.mark.parametrize("where", ["the flash write", "the Wi-Fi check"])
@pytest.mark.parametrize("raise_errors", [False, True])
def test_a_network_looking_oserror_from_the_os_is_its_own_not_retried(mpy, fault, where, raise_errors):
    # The OS's own OSError looks like a network error (ECONNRESET from a flash driver, -113 when Wi-Fi goes): it is
    # not DownloadManager's to retry. It reaches the updater, which pauses and later resumes without a hole.
    v = mpy.run(UPDATE + """
import errno
failure = OSError(errno.ECONNRESET, "flash write failed")
flash = FlashPartition({5: failure} if WHERE == "the flash write" else {})
wifi_went = [False]
def is_online():  # Wi-Fi goes once, when block 4 is written: the next chunk finds it gone
    if WHERE == "the flash write" or wifi_went[0] or 4 not in flash.blocks:
        return True
    wifi_went[0] = True
    return False
async def main():
    updater = UpdateDownloader(flash, is_online=is_online, raise_errors=RAISE_ERRORS)
    paused = await updater.download_and_install(URL)
    caught = updater.caught
    same = caught is failure if WHERE == "the flash write" else caught.args[0] == -113
    resumed = await updater.download_and_install(URL)
    result(**flash_report(flash, paused=paused, same=same, resumed=resumed))
run(main())
""", URL=fault.url("/bytes/%d" % FIRMWARE), WHERE=where, RAISE_ERRORS=raise_errors).value
    assert v["same"] is True, v
    assert v["paused"]["paused"] is True and v["paused"]["bytes_written"] == 5 * BLOCK, v
    assert v["resumed"]["success"] is True, v
    assert (v["written"], v["holes"]) == (flashed(FIRMWARE), [])
    assert ranges(fault) == [None, "bytes=%d-" % (5 * BLOCK)]  # one request per call: nothing retried


UPDATE_INFO = {"version": "0.9.2", "download_url": "https://updates.example/fw_0.9.2.bin",
               "changelog": "Faster downloads\nFixes"}


def test_the_update_checker_reads_the_update_json(mpy, fault):
    fault.files["osupdate_test.json"] = json.dumps(UPDATE_INFO).encode()
    v = mpy.run(UPDATE + """
async def main():
    result(info=await fetch_update_info(URL))
run(main())
""", URL=fault.url("/file/osupdate_test.json?chunked=1&chunks=7")).value
    assert v["info"] == UPDATE_INFO


@pytest.mark.parametrize("failure,raise_errors,verdict", [
    ("404", False, "error"), ("404", True, "error"),
    ("refused", False, "error"),         # None: the checker can't tell the network failed
    ("refused", True, "waiting_wifi"),   # NetworkError: is_network_error() says so
])
def test_what_the_update_checker_makes_of_a_failure(mpy, fault, failure, raise_errors, verdict):
    url = fault.url("/status/404") if failure == "404" else refused_url()
    v = mpy.run(UPDATE + """
async def main():
    result(verdict=await check_for_update(URL, **OPTIONS))
run(main())
""", URL=url, OPTIONS={"raise_errors": True} if raise_errors else {}).value
    assert v["verdict"] == verdict


# ---------------------------------------------------------------------------------------------------------------
# The App Store (appstore.py, app_detail.py, appstore_core.py)

INDEX = [{"fullname": "com.example.hello", "name": "Hello", "version": "1.2.0",
          "icon_url": "https://apps.example/hello.png", "download_url": "https://apps.example/hello.mpk"},
         {"fullname": "com.example.clock", "name": "Clock ⏰", "version": "0.3.1",
          "icon_url": "https://apps.example/clock.png", "download_url": "https://apps.example/clock.mpk"}]


def test_the_app_store_reads_its_index(mpy, fault):
    fault.files["app_index.json"] = json.dumps(INDEX).encode()
    v = mpy.run("""
from os_callers import *
async def main():
    result(index=await fetch_index(URL), missing=await fetch_index(MISSING))
run(main())
""", URL=fault.url("/file/app_index.json"), MISSING=fault.url("/file/none.json")).value
    assert v == {"index": INDEX, "missing": None}


def test_icons_come_within_five_seconds_and_a_slow_one_gives_up(mpy, fault):
    icons = {"icon%d.png" % i: payload(3000 + 700 * i, seed=i) for i in range(4)}
    fault.files.update(icons)
    v = mpy.run("""
from os_callers import *
from testlib import fd_count
from time import ticks_diff, ticks_ms
async def main():
    fds = fd_count()
    apps = [StoreApp(URL + name) for name in NAMES] + [StoreApp(SLOW)]
    tasks = [TaskManager.create_task(download_icon(app)) for app in apps]
    for task in tasks[:-1]:
        await task
    skip_event_loop_time(5000)  # the slow icon's five seconds pass
    t0 = ticks_ms()
    await tasks[-1]
    given_up_ms = ticks_diff(ticks_ms(), t0)
    slow = apps[-1]
    await DownloadManager.close_session()
    result(icons=[sha256(app.icon_data) for app in apps[:-1]], failures=[repr(app.failure) for app in apps[:-1]],
           slow=[slow.icon_data and sha256(slow.icon_data), type(slow.failure).__name__], ms=given_up_ms,
           left=DownloadManager.downloads(), fds=fd_count() - fds)
run(main())
""", URL=fault.url("/file/"), NAMES=sorted(icons), SLOW=fault.url("/bytes/5000?stall=1000&stall_s=20")).value
    assert v["icons"] == [sha(icons[name]) for name in sorted(icons)]
    assert v["failures"] == ["None"] * 4
    assert v["slow"] == [None, "TimeoutError"] and v["ms"] < 1000, v
    assert (v["left"], v["fds"]) == ([], 0)


REPORTS = """
from os_callers import *
async def main():
    await report_install(API, "com.example.hello", 7, MAC, DEVICE_ID)
    await report_rating(API, "com.example.hello", 7, MAC, DEVICE_ID, 4)
    result(done=True)
run(main())
"""
MAC, DEVICE_ID = "24:6f:28:aa:bb:cc", "5d41402abc4b2a76b9719d911017c592"


def test_install_and_rating_reports_reach_the_server(mpy, fault):
    r = mpy.run(REPORTS, API=fault.url("/echo/api/v3"), MAC=MAC, DEVICE_ID=DEVICE_ID)
    assert r.value == {"done": True} and r.stderr == ""
    query = "?mac=%s&id=%s" % (MAC, DEVICE_ID)
    install, rating = [(r.method, r.target, r.headers.get("accept"), r.headers.get("content-type"), r.body)
                       for r in fault.log]
    assert install == ("POST", "/echo/api/v3/projects/com.example.hello/rev7/report/install" + query,
                       "application/json", None, b"")
    assert rating == ("POST", "/echo/api/v3/projects/com.example.hello/rev7/report/rating" + query,
                      "application/json", "application/json", b'{"rating": 4}')


@pytest.mark.parametrize("server", ["answers 404", "refuses", "drops the answer"])
def test_a_failed_report_is_logged_without_its_path(mpy, fault, server):
    api = {"answers 404": fault.url("/nowhere"), "refuses": refused_url().rsplit("/", 1)[0],
           "drops the answer": fault.url("/bytes/50000?drop=10&x=")}[server]
    r = mpy.run(REPORTS, API=api, MAC=MAC, DEVICE_ID=DEVICE_ID)
    assert r.value == {"done": True}
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr  # one line per failed report
    host = api.split("/")[2]
    for line in lines:
        assert "http://%s/…" % host in line, line
        for secret in ("report", "projects", "rev7", MAC, DEVICE_ID, "bytes/50000", "nowhere"):
            assert secret not in line, line


PROJECT = {"version": {"revision": 7, "app_metadata": {"version": "1.2.0", "author": "Ann", "executable": "x"},
                       "files": [{"ext": ".png", "url": "icon.png"},
                                 {"ext": ".MPK", "url": None, "size_of_content": 0}]}}


def test_an_app_is_installed_from_its_project_details(mpy, fault):
    # AppDetail on BadgeHub: the project's details give the .mpk's URL and size, the installer's progress follows that
    # size; details that can't be had (a 404, an answer that is no JSON) are {}
    package = mpk()
    fault.files["hello.mpk"] = package
    project = json.loads(json.dumps(PROJECT))
    project["version"]["files"][1].update(url=fault.url("/file/hello.mpk"), size_of_content=len(package))
    fault.files["details.json"] = json.dumps(project).encode()
    fault.files["broken.json"] = b'{"version": {"revision": 7, "app_meta'
    v = mpy.run("""
from os_callers import *
async def main():
    details = await fetch_project_details(URL)
    percents = []
    async def progress(percent):
        percents.append(percent)
    installed_ok = await download_and_install_package(details["download_url"], APP, details["download_url_size"],
                                                      progress)
    result(details=details, ok=installed_ok, files=installed("apps/" + APP), percents=percents,
           missing=await fetch_project_details(MISSING), broken=await fetch_project_details(BROKEN))
run(main())
""", URL=fault.url("/file/details.json?chunked=1&chunks=5"), MISSING=fault.url("/status/404"),
                BROKEN=fault.url("/file/broken.json"), APP=APP).value
    assert v["details"] == {"version": "1.2.0", "publisher": "Ann", "revision": 7,
                            "download_url": fault.url("/file/hello.mpk"), "download_url_size": len(package)}
    assert v["ok"] is True and v["files"] == {name: sha(data) for name, data in APP_FILES.items()}
    assert v["percents"][-1] == 100 and all(a < b for a, b in zip(v["percents"], v["percents"][1:]))
    assert (v["missing"], v["broken"]) == ({}, {})


APP_INDEX = [{"slug": "com.example.hello", "name": "Hello", "version": "1.10.0"},
             {"slug": "com.example.clock", "name": "Clock", "version": "0.3.1"},
             {"slug": "com.example.other", "name": "Not installed", "version": "9.0"}]


@pytest.mark.parametrize("answer,raise_errors,verdict", [
    ("the index", False, ["updates_available", ["com.example.hello"]]),
    ("no JSON", False, ["error", []]),
    ("404", False, ["error", []]), ("404", True, ["error", []]),
    ("refused", False, ["error", []]),          # None: no exception to ask is_network_error() about
    ("refused", True, ["waiting_wifi", []]),
])
def test_what_the_app_update_check_makes_of_the_index_and_of_failures(mpy, fault, answer, raise_errors, verdict):
    # AppUpdateManager.check_for_updates, the App Store's background service
    fault.files["index.json"] = json.dumps(APP_INDEX).encode()
    fault.files["page.html"] = b"<html>maintenance</html>"
    url = {"the index": fault.url("/file/index.json"), "no JSON": fault.url("/file/page.html"),
           "404": fault.url("/status/404"), "refused": refused_url()}[answer]
    v = mpy.run("""
from os_callers import *
async def main():
    result(verdict=await check_app_updates(URL, {"com.example.hello": "1.9.2", "com.example.clock": "0.3.1"},
                                           **OPTIONS))
run(main())
""", URL=url, OPTIONS={"raise_errors": True} if raise_errors else {}).value
    assert v["verdict"] == verdict


def test_the_weather_app_gets_its_forecast_with_the_query_as_written(mpy, fault):
    forecast = {"current": {"temperature_2m": 7.5}, "hourly": {"time": ["2026-12-07T%02d:00" % h for h in range(8)]}}
    fault.files["forecast"] = json.dumps(forecast).encode()
    v = mpy.run("""
from os_callers import *
async def main():
    result(shown=await fetch_weather(URL, 50.08, 14.42), failed=await fetch_weather(DOWN, 50.08, 14.42),
           query=forecast_query(50.08, 14.42))
run(main())
""", URL=fault.url("/file/forecast"), DOWN=fault.url("/status/503")).value
    assert v == {"shown": "7.5 C, 8 hours ahead", "failed": "Download error", "query": v["query"]}
    assert fault.log[0].target == "/file/forecast" + v["query"] and "," in v["query"]


# ---------------------------------------------------------------------------------------------------------------
# The app installer (app_manager.download_and_install_package): the .mpk unpacked while it downloads

APP = "com.example.hello"
APP_FILES = {
    "MANIFEST.JSON": json.dumps({"name": "Hello", "fullname": APP, "version": "1.2.0"}).encode(),
    "assets/hello.py": b"# the app\n" + b"print('hello')\n" * 900,  # deflated
    "assets/data.bin": payload(40_000, seed=9),  # stored: its bytes go to the file as they arrive
    "res/mipmap-mdpi/icon_64x64.png": payload(5499, seed=4),
    "assets/empty.txt": b"",
}


def mpk(top=APP, files=APP_FILES):
    """A .mpk as MicroPythonOS packs one: a ZIP whose first entry is the app's folder."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(zipfile.ZipInfo(top + "/"), b"")
        for name, data in files.items():
            method = zipfile.ZIP_STORED if name.endswith(".bin") else zipfile.ZIP_DEFLATED
            z.writestr(top + "/" + name, data, compress_type=method)
    return out.getvalue()


INSTALL = """
from os_callers import *
from testlib import fd_count, exists
import gc
async def main():
    fds = fd_count()
    percents = []
    async def progress(percent):  # AppDetail.pcb: a share of the progress bar
        percents.append(percent)
    try:
        outcome = await download_and_install_package(URL, APP, download_url_size=SIZE, progress_callback=progress)
    except RuntimeError as e:
        outcome = str(e)
    await DownloadManager.close_session()
    gc.collect()  # a failed install leaves the member it was writing open, for the collector to close
    files = installed("apps/" + APP) if exists("apps/" + APP) else None
    result(outcome=outcome, files=files, percents=percents, fds=fd_count() - fds)
run(main())
"""


@pytest.mark.parametrize("link", ["steady", "breaks twice"])
def test_an_app_is_installed_while_its_mpk_downloads(mpy, fault, link):
    package = mpk()
    fault.files["hello.mpk"] = package
    url = fault.url("/file/hello.mpk" + ("?truncate=20000&key=mpk&times=2" if link == "breaks twice" else ""))
    v = mpy.run(INSTALL, URL=url, APP=APP, SIZE=len(package)).value
    assert v["outcome"] is True, v
    assert v["files"] == {name: sha(data) for name, data in APP_FILES.items()}
    assert v["percents"][-1] == 100 and all(a < b for a, b in zip(v["percents"], v["percents"][1:]))
    assert v["fds"] == 0
    if link == "breaks twice":
        assert ranges(fault) == [None, "bytes=20000-", "bytes=40000-"]


@pytest.mark.parametrize("package,query,error", [
    ("another app's", "", "Download failed for com.example.hello: first entry com.example.other/ is not"),
    ("damaged", "", "Download failed for com.example.hello: CRC mismatch"),
    ("good", "?drop=20000&norange=1", "Download failed for com.example.hello"),  # can't resume: chunks went out
])
def test_a_failed_install_leaves_no_app_behind(mpy, fault, package, query, error):
    data = mpk(top="com.example.other") if package == "another app's" else mpk()
    if package == "damaged":
        i = data.index(APP_FILES["assets/data.bin"][:64]) + 30_000
        data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
    fault.files["hello.mpk"] = data
    v = mpy.run(INSTALL, URL=fault.url("/file/hello.mpk" + query), APP=APP, SIZE=len(data)).value
    assert v["outcome"] == error if query else v["outcome"].startswith(error), v
    assert v["files"] is None and v["fds"] == 0
    assert len(fault.log) == (2 if query else 1)  # the app's own error is never retried


def test_the_app_stores_update_all_installs_without_a_size_or_progress_callback(mpy, fault):
    # AppStore._run_update_all: download_and_install_package(url, fullname), the .mpk's size unknown to it
    package = mpk()
    fault.files["hello.mpk"] = package
    v = mpy.run("""
from os_callers import *
from testlib import fd_count
async def main():
    fds = fd_count()
    ok = await download_and_install_package(URL, APP)
    await DownloadManager.close_session()
    result(ok=ok, files=installed("apps/" + APP), fds=fd_count() - fds)
run(main())
""", URL=fault.url("/file/hello.mpk?chunked=1"), APP=APP).value
    assert v == {"ok": True, "files": {name: sha(data) for name, data in APP_FILES.items()}, "fds": 0}


@pytest.mark.parametrize("failure,label", [
    ("no room for a member", "Not enough space"),
    # the documented False: the App Store's Wi-Fi hint needs an exception (raise_errors=True, docs/decisions.md)
    ("a drop it can't resume", "Download failed: Download failed for com.exampl"),
])
def test_what_the_app_details_screen_says_when_an_install_fails(mpy, fault, failure, label):
    package = mpk()
    fault.files["hello.mpk"] = package
    query = "?drop=20000&norange=1" if failure == "a drop it can't resume" else ""
    v = mpy.run("""
from os_callers import *
from testlib import exists
import gc
async def main():
    try:
        await download_and_install_package(URL, APP, SIZE, free_bytes=FREE)
        said = "installed"
    except RuntimeError as e:
        said = install_label(e)
    gc.collect()
    result(said=said, left=exists("apps/" + APP), listed=DownloadManager.downloads())
run(main())
""", URL=fault.url("/file/hello.mpk" + query), APP=APP, SIZE=len(package),
                FREE=10_000 if failure == "no room for a member" else None).value
    assert v == {"said": label, "left": False, "listed": []}
    assert len(fault.log) == (2 if query else 1)  # the app's own error is never retried


# ---------------------------------------------------------------------------------------------------------------
# MicroPythonOS's own mpos/__init__.py: in the OS's tree our modules sit beside it (docs/usage.md, On a device)


def test_the_library_runs_under_micropythonos_own_package_init(mpy, fault, tmp_path):
    # The OS's __init__ imports every service at once, DownloadManager before TaskManager: none of our modules may
    # need a name that only our own __init__ has
    tree = tmp_path / "os-lib"
    shutil.copytree(LIB, tree)
    (tree / "mpos" / "__init__.py").write_text(
        "from .net.download_manager import DownloadManager\nfrom .task_manager import TaskManager\n")
    proc, results = run_on(UPDATE_STAND_IN, tmp_path, lib=tree, URL=fault.url("/bytes/70001?drop=30000&key=os"),
                           OUT=str(tmp_path / "out.bin"))
    assert proc.returncode == 0, proc.stderr
    assert results == [{"sync": True, "in_task": True, "sha": sha(payload(70001)), "listed": 1, "session": False}]


def test_the_os_test_mocks_build_their_headers_with_merge_headers(mpy):
    # MicroPythonOS's mpos/testing/mocks.py (MockDownloadManager) and its tests call upstream's private
    # DownloadManager._merge_headers(headers): a new dict, the caller's headers and a User-Agent unless one is there
    v = mpy.run("""
from mpos import DownloadManager
given = {"Accept": "application/json"}
merged = DownloadManager._merge_headers(given)
result(merged=merged, given=given, none=DownloadManager._merge_headers(None), bare=DownloadManager._merge_headers(),
       own=DownloadManager._merge_headers({"user-agent": "Mine/1"}))
""").value
    agent = v["none"]["User-Agent"]
    assert agent.startswith("MicroPythonOS/"), v
    assert v["merged"] == {"Accept": "application/json", "User-Agent": agent}, v
    assert v["given"] == {"Accept": "application/json"} and v["bare"] == {"User-Agent": agent}, v
    assert v["own"] == {"user-agent": "Mine/1"}, v


UPDATE_STAND_IN = """
from mpos import DownloadManager, TaskManager

sync = DownloadManager.download_url(URL, outfile=OUT)  # from synchronous code: runs at once
async def main():
    task = TaskManager.create_task(DownloadManager.download_url(URL.replace("key=os", "key=task"), outfile=OUT))
    await TaskManager.sleep_ms(0)
    listed = len(DownloadManager.downloads())
    done = await task
    await DownloadManager.close_session()
    return done, listed
in_task, listed = run(main())
result(sync=sync, in_task=in_task, sha=sha256_file(OUT), listed=listed, session=DownloadManager.is_session_active())
"""
