"""A file download on a hostile flash: a filesystem that fills up or fails on demand (tests/mpy/faultfs.py, mounted at
/flash on the unix port). Whatever the filesystem does, a download into it returns True with the exact bytes, or
fails (False, or LocalFileError with raise_errors) with OUTFILE as it was, no .tmp left, no file handle, fd or
listed download behind, its failure logged once with the filesystem's reason; and the next download works.

The sweeps (SWEEP below) fail the k-th filesystem operation of a download, for every k until one completes without
meeting the fault, or leave it a given number of bytes of room: on 5 KB bodies, so every k runs in the suite."""
import errno
import hashlib
import itertools

import pytest

from tools.testservers import payload

SIZE = 5000  # a body of five 1 KB chunks: every operation of a download is met within a few dozen k
OLD = b"the app's previous version\n" * 10
DIR = "dl"  # OUTFILE's folder on the flash
RUNS = itertools.count()  # sweeps run so far, for the fault server's keys

# One scenario swept on MicroPython. An attempt: the flash set up as SETUP says (OUTFILE's old bytes, a .part left by
# a cut download), the fault armed, one download; then its traces, and the next download with the fault gone.
SWEEP = """
import os, vfs
from faultfs import FaultFS
from mpos import DownloadManager
import mpos._log

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1
if MIN_SEGMENT:
    import mpos.net.segments
    mpos.net.segments.min_segment = MIN_SEGMENT
fs = FaultFS(ROOT)
vfs.mount(fs, "/flash")
FOLDER = "/flash/" + DIR
OUT = FOLDER + "/" + NAME
LOGGED = []
mpos._log.warning = lambda source, line: LOGGED.append(line)


def wipe(real):
    for entry in fs.real.ilistdir(real):
        path = real + "/" + entry[0]
        if entry[1] == 0x4000:  # a directory
            wipe(path)
            fs.real.rmdir(path)
        else:
            fs.real.remove(path)


def listing():
    try:
        return sorted(entry[0] for entry in os.ilistdir(FOLDER))
    except OSError:
        return None


async def download(url, resume, **kw):
    # -> True/False, or what it raised: [class, reason, message]
    if resume:
        kw["headers"] = {"Range": "bytes=%d-" % DownloadManager.get_resume_position(OUT)}
    try:
        return await DownloadManager.download_url(url, outfile=OUT, raise_errors=RAISE, **dict(KW, **kw))
    except Exception as e:
        return [type(e).__name__, getattr(e, "reason", None), str(e)]


async def prepare(url):
    wipe(ROOT)
    os.mkdir(FOLDER)
    if SETUP.get("old"):
        with open(OUT, "wb") as f:
            f.write(SETUP["old"])
    if SETUP.get("cut"):  # a download cut after `cut` bytes, its .part and record left for a resume
        DownloadManager.max_reconnects = 0
        await DownloadManager.download_url(url, outfile=OUT)
        DownloadManager.max_reconnects = 10


ATTEMPTS = [0]


async def attempt(cap, k, code, sticky):
    # (a cut is the first request of a key: each attempt of each run has its own, in a URL its downloads share)
    ATTEMPTS[0] += 1
    url = URL + "&drop=%d&key=%s-%d" % (SETUP["cut"], RUN, ATTEMPTS[0]) if SETUP.get("cut") else URL
    await prepare(url)
    before = listing()
    fds = fd_count()
    fs.fail(k, code, OPS, sticky)
    if cap is not None:  # bytes free for the download
        fs.cap = fs.used() + cap
    del LOGGED[:]
    outcome = await download(url, SETUP.get("resume"))
    hits = fs.hits
    fs.fail_at = fs.cap = None
    seen = {"cap": cap, "k": k, "errno": code, "sticky": sticky, "hits": hits, "outcome": outcome, "before": before,
            "after": listing(), "out": sha256_file(OUT), "open": [f.name for f in fs.opened],
            "fds": fd_count() - fds, "listed": len(DownloadManager.downloads()), "logged": list(LOGGED),
            "reason": str(OSError(code))}
    for f in list(fs.opened):
        f.close()
    # (the resume recipe only while a .part is left: without one it would continue from OUTFILE, the old file)
    seen["next"] = await download(url, SETUP.get("resume") and NAME + ".part" in (seen["after"] or ()))
    seen["next_out"] = sha256_file(OUT)
    return seen


async def main():
    for cap in CAPS:
        for code in ERRNOS:
            for sticky in STICKY:
                for k in KS or range(1, 10000):
                    seen = await attempt(cap, k, code, sticky)
                    result(**seen)
                    if not seen["hits"] and not KS:
                        break

run(main())
"""


def sweep(mpy, url, *, errnos=(errno.EIO,), ks=None, ops=None, sticky=(False,), caps=(None,), setup=None, kw=None,
          raise_errors=True, min_segment=0):
    """Run SWEEP: -> its attempts, one dict each. ks None: every k until the download misses the fault ([None]: no
    fault); caps: the bytes left free for the download, one set of attempts each (None: all there is)."""
    root = mpy.tmpdir / "flash"
    root.mkdir(exist_ok=True)
    return mpy.run(SWEEP, timeout=300, ROOT=str(root), URL=url, ERRNOS=list(errnos), KS=ks, OPS=ops,
                   STICKY=list(sticky), CAPS=list(caps), SETUP=setup or {}, KW=kw or {}, RAISE=raise_errors,
                   MIN_SEGMENT=min_segment, DIR=DIR, NAME="app.bin", RUN=next(RUNS)).results


def sha(data):
    return hashlib.sha256(data).hexdigest()


def check_contract(seen, good, old):
    """What every attempt must show, whatever the fault: -> a list of what it broke (empty: none)."""
    broken = []
    outcome = seen["outcome"]
    if outcome is True:
        if seen["out"] != good:
            broken.append("success with wrong bytes")
    else:
        if seen["out"] != old:
            broken.append("OUTFILE changed by a failed download")
        if isinstance(outcome, list) and outcome[1] != "file" and seen["hits"]:
            broken.append("a filesystem fault reported as %s %r" % (outcome[0], outcome[1]))
        if len(seen["logged"]) != 1:
            broken.append("logged %d times" % len(seen["logged"]))
        elif seen["hits"] and seen["reason"] not in seen["logged"][0]:
            broken.append("the log does not say the filesystem's reason")
    # what the download leaves beside OUTFILE, unless the flash refused to remove it
    refused = [path for op, path, code in seen["hits"] if op == "remove"]
    left = [name for name in seen["after"] or () if "/%s/%s" % (DIR, name) not in refused]
    if any(name.endswith(".tmp") for name in left):
        broken.append("a .tmp left")
    if outcome is not True and seen["errno"] == errno.ENOSPC and seen["hits"] and any(".part" in n for n in left):
        broken.append("a full flash keeps %s" % left)
    if seen["open"] or seen["fds"] or seen["listed"]:
        broken.append("left behind: %s files open, %d fds, %d listed" % (seen["open"], seen["fds"], seen["listed"]))
    if seen["next"] is not True or seen["next_out"] != good:
        broken.append("the next download: %r" % (seen["next"],))
    return broken


def broken_attempts(results, good, old):
    return [(r["k"], r["errno"], r["sticky"], r["hits"], r["outcome"], r["after"], b)
            for r in results for b in [check_contract(r, good, old)] if b]


# --- every fault, at every step of a download ------------------------------------------------------------------

ERRNOS = (errno.EIO, errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT)
FS_OPS_BUT_STAT = ["open", "remove", "rename", "ilistdir", "mkdir", "rmdir", "statvfs", "write", "read", "readinto",
                   "readline", "seek", "flush", "close"]
SCENARIOS = {
    "a new file": dict(path="/bytes/%d" % SIZE),
    "a file replaced": dict(path="/bytes/%d" % SIZE, setup={"old": OLD}),
    "a file replaced, without raise_errors": dict(path="/bytes/%d" % SIZE, setup={"old": OLD}, raise_errors=False),
    "through a redirect": dict(path="/redirect?to=/bytes/%d" % SIZE, setup={"old": OLD}),
    # the documented resume recipe after a cut download (get_resume_position inside the faults' reach)
    "a resume": dict(path="/bytes/%d?" % SIZE, setup={"old": OLD, "cut": 2500, "resume": True}),
    "a resume with sha256": dict(path="/bytes/%d?" % SIZE, setup={"old": OLD, "cut": 2500, "resume": True},
                                 kw={"sha256": sha(payload(SIZE))}),
    # the resource changed since the cut: the .part starts over
    "a resume that starts over": dict(path="/bytes/%d?newer=2" % SIZE, seed=1,
                                      setup={"old": OLD, "cut": 2500, "resume": True}),
    "segments": dict(path="/bytes/%d" % SIZE, setup={"old": OLD}, kw={"segments": 2}),
    "segments with sha256": dict(path="/bytes/%d" % SIZE, setup={"old": OLD},
                                 kw={"segments": 2, "sha256": sha(payload(SIZE))}),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_filesystem_fault_ends_in_the_right_file_or_the_old_one(mpy, fault, scenario):
    # each errno, once and from then on (a flash gone read-only), at every operation until one is never reached
    # (ENOENT where a file exists is no stat's answer: a stat that says so would make the resume recipe continue
    # from OUTFILE, the old file)
    s = SCENARIOS[scenario]
    results = []
    for errnos, ops in ((ERRNOS[:-1], None), (ERRNOS[-1:], FS_OPS_BUT_STAT)):
        results += sweep(mpy, fault.url(s["path"]), errnos=errnos, ops=ops, sticky=(False, True),
                         setup=s.get("setup"), kw=s.get("kw"), min_segment=1024,
                         raise_errors=s.get("raise_errors", True))
    assert len(results) > 10 * len(ERRNOS)  # (every step was met: a sweep ends only once k is past the last one)
    old = s.get("setup", {}).get("old")
    assert broken_attempts(results, sha(payload(SIZE, s.get("seed", 0))), old and sha(old)) == []


# --- a full flash ------------------------------------------------------------------------------------------------

RECORD = 60  # bytes of OUTFILE.part.state, about (the URL's hash, the ETag, the size)
RECORD_OF_SEGMENTS = 100  # and with the ranges missing, which a segmented download records before its first byte


def caps(record):
    # bytes free when a download starts: none, inside the record, mid-body, around the body's end and the record
    # beside it
    return sorted({0, 1, 2, *range(20, record + 10, 7), SIZE // 2, *range(SIZE - 3, SIZE + record + 10)})


@pytest.mark.parametrize("scenario", ["a file replaced", "a resume", "segments"])
def test_a_full_flash_fails_the_download_and_gives_its_space_back(mpy, fault, scenario):
    s = SCENARIOS[scenario]
    tried = caps(RECORD_OF_SEGMENTS if scenario == "segments" else RECORD)
    results = sweep(mpy, fault.url(s["path"]), errnos=[errno.ENOSPC], ks=[None], caps=tried, setup=s.get("setup"),
                    kw=s.get("kw"), min_segment=1024)
    old = s["setup"]["old"]
    assert broken_attempts(results, sha(payload(SIZE)), sha(old)) == []
    done = [r["cap"] for r in results if r["outcome"] is True]
    assert done and done == tried[tried.index(done[0]):]  # from some room on, every download fits
    failed = [r for r in results if r["outcome"] is not True]
    assert failed and all(r["outcome"][2].endswith("(no space left)") for r in failed)
    assert all(r["after"] == ["app.bin"] for r in failed)  # the old file, and nothing of the download


def test_a_flash_that_fills_up_under_a_large_body_fails_as_full_at_once(mpy, fault):
    # Most chunks of a large body go straight from the socket to the file (Download._straight): a write that
    # fails there is the flash's, not a failed try of the network's to make again
    big = 300000
    [r] = sweep(mpy, fault.url("/bytes/%d" % big), errnos=[errno.ENOSPC], ks=[None], caps=[100000],
                setup={"old": OLD})
    assert check_contract(r, sha(payload(big)), sha(OLD)) == []
    assert r["outcome"][:2] == ["LocalFileError", "file"] and r["outcome"][2].endswith("(no space left)"), r
    assert r["after"] == ["app.bin"] and len(fault.log) == 2  # one request, and the next download's


# --- renames -----------------------------------------------------------------------------------------------------


def test_a_rename_the_flash_refuses_never_costs_the_old_file(mpy, fault):
    # every rename from the k-th on fails (EIO), while the rest of the filesystem works
    results = sweep(mpy, fault.url("/bytes/%d" % SIZE), errnos=[errno.EIO], ops=["rename"], sticky=(True,),
                    setup={"old": OLD})
    assert [r["hits"][0][1] for r in results if r["hits"]] == ["/dl/app.bin.part.state.tmp", "/dl/app.bin.part"]
    assert broken_attempts(results, sha(payload(SIZE)), sha(OLD)) == []


RENAME_OVER = """
import os, vfs
from faultfs import FaultFS
from mpos import DownloadManager

fs = FaultFS(ROOT)
fs.rename_over = False
vfs.mount(fs, "/flash")
with open("/flash/app.bin", "wb") as f:
    f.write(b"old")
ok = DownloadManager.download_url(URL, outfile="/flash/app.bin")
result(ok=ok, out=sha256_file("/flash/app.bin"), files=sorted(os.listdir("/flash")))
"""


def test_a_filesystem_that_wont_rename_over_a_file_still_gets_it_replaced(mpy, fault):
    (mpy.tmpdir / "flash").mkdir()
    v = mpy.run(RENAME_OVER, ROOT=str(mpy.tmpdir / "flash"), URL=fault.url("/bytes/%d" % SIZE)).value
    assert v == {"ok": True, "out": sha(payload(SIZE)), "files": ["app.bin"]}


# --- paths that name no file -------------------------------------------------------------------------------------

PATHS = """
import os, vfs
from faultfs import FaultFS
from mpos import DownloadManager
import mpos._log

LOGGED = []
mpos._log.warning = lambda source, line: LOGGED.append(line)
vfs.mount(FaultFS(ROOT), "/flash")
os.mkdir("/flash/dl")
os.mkdir("/flash/dl/app.bin")
fds = fd_count()
for outfile in OUTFILES:
    ok = DownloadManager.download_url(URL, outfile=outfile)
    result(outfile=outfile, ok=ok, logged=LOGGED[-1:], files=sorted(os.listdir("/flash/dl")), fds=fd_count() - fds)
"""


def test_a_path_that_names_no_file_fails_before_a_byte_is_fetched(mpy, fault):
    outfiles = ["/flash/missing/app.bin", "/flash/dl/app.bin", "/flash/dl/", "/flash/dl", "/flash/dl/new/"]
    (mpy.tmpdir / "flash").mkdir()
    results = mpy.run(PATHS, ROOT=str(mpy.tmpdir / "flash"), URL=fault.url("/bytes/%d" % SIZE),
                      OUTFILES=outfiles).results
    assert [r["outfile"] for r in results] == outfiles
    for r in results:
        assert r["ok"] is False and r["files"] == ["app.bin"] and r["fds"] == 0, r
        assert len(r["logged"]) == 1 and r["outfile"] in r["logged"][0], r
    assert "is a directory" in results[1]["logged"][0] and "ENOENT" in results[0]["logged"][0]
    assert fault.log == []  # no request: each failed before it


# --- the App Store: a .mpk unpacked by the chunk callback as it downloads ------------------------------------

APP_STORE = """
import os, vfs
from faultfs import FaultFS
from os_callers import *
import mpos._log

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1  # (a retry would show as a request more, not as a wait)
mpos._log.warning = lambda source, line: None
fs = FaultFS(ROOT)
vfs.mount(fs, "/flash")
os.chdir("/flash")  # the installer writes apps/<fullname> where it runs
os.mkdir("apps")


async def install():
    # -> True, or what the installer raised
    try:
        return await download_and_install_package(URL, APP, download_url_size=SIZE)
    except Exception as e:  # its RuntimeError, or an OSError of its own clean-up before the download
        return [type(e).__name__, str(e)]


def files():
    # what is installed: None for nothing
    return installed("apps/" + APP) if exists("apps/" + APP) else None


async def main():
    fds = fd_count()
    for code in ERRNOS:
        for sticky in (False, True):
            for k in range(1, 10000):
                fs.fail(k, code, None, sticky)
                outcome = await install()
                hits = fs.hits
                fs.fail_at = None
                for f in list(fs.opened):  # a failed install leaves the member it was writing open, for the collector
                    f.close()
                got = files()
                remove_tree("apps/" + APP)
                again = [await install(), files()]
                result(k=k, errno=code, sticky=sticky, hits=hits, outcome=outcome, files=got, again=again,
                       fds=fd_count() - fds, listed=len(DownloadManager.downloads()))
                if not hits:
                    break

run(main())
"""


def test_an_app_store_install_on_a_failing_flash_fails_with_the_installers_error_once(mpy, fault):
    # the flash's errors reach the installer through its chunk callback: the app's own, never retried
    from test_os_modules import APP, APP_FILES, mpk

    small = {name: data[:3000] for name, data in APP_FILES.items() if name != "res/mipmap-mdpi/icon_64x64.png"}
    package = mpk(files=small)
    fault.files["hello.mpk"] = package
    (mpy.tmpdir / "flash").mkdir()
    results = mpy.run(APP_STORE, ROOT=str(mpy.tmpdir / "flash"), URL=fault.url("/file/hello.mpk"), APP=APP,
                      SIZE=len(package), ERRNOS=list(ERRNOS)).results
    app = {name: sha(data) for name, data in small.items()}
    assert len(results) > 10 * len(ERRNOS)
    for r in results:
        assert r["again"] == [True, app] and r["fds"] == r["listed"] == 0, r
        assert r["files"] == app if r["outcome"] is True else r["hits"], r
    failed = [r["outcome"] for r in results if r["outcome"] is not True]
    assert all(f[0] == "RuntimeError" for f in failed if "Download failed" in f[1])
    assert len(fault.log) <= 2 * len(results)  # each install one request at most: none retried
