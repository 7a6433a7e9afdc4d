"""DownloadManager loses nothing: integrity, atomic files, self-recovery, failing well, cancellation, low memory,
concurrency and security, each proven on the unix port against the fault server (exact hashes or an untouched
outfile)."""
import http.server
import threading

import pytest

from tools.bench import SMALL_HEAP
from tools.mpy import ROMFS_PRELUDE, romfs_heapsize, romfs_image
from tools.testservers import payload, refused_url, sha256_of, text_payload

from test_http_dns import unanswered_port  # noqa: F401 (a fixture)

# --- snippets -------------------------------------------------------------------------------------------------

PRE = """
import asyncio, os, time
import aiohttp
from mpos import DownloadManager, TaskManager

def since(t0):
    return time.ticks_diff(time.ticks_ms(), t0)

def slurp(p):
    try:
        with open(p, 'rb') as f:
            return f.read()
    except OSError:
        return None

SENT = record_ranges()  # [Range, If-Range] of every request the DownloadManager sends

def describe(e):
    return [type(e).__name__, getattr(e, 'reason', None), getattr(e, 'status', None), str(e)]
"""

# One download in MODE ("memory", "file", "stream"); OLD (bytes or None) is the outfile's previous content; TUNE
# sets DownloadManager's tunables first.
ONE = PRE + """
async def main():
    for name, value in TUNE.items():
        setattr(DownloadManager, name, value)
    if OLD is not None:
        with open(OUT, 'wb') as f:
            f.write(OLD)
    if PART is not None:
        with open(OUT + '.part', 'wb') as f:
            f.write(PART)
    h = new_sha()
    got = [0]
    def cb(chunk):
        h.update(chunk)
        got[0] += len(chunk)
    kw = dict(KW)
    if MODE == 'file':
        kw['outfile'] = OUT
    elif MODE == 'stream':
        kw['chunk_callback'] = cb
    if RESUME:  # the spec's "Resume Partial Download" recipe
        pos = DownloadManager.get_resume_position(OUT)
        kw['headers'] = {'Range': 'bytes=%d-' % pos} if pos > 0 else None
    t0 = time.ticks_ms()
    err = None
    try:
        r = await DownloadManager.download_url(URL, **kw)
    except Exception as e:
        r, err = 'raised', describe(e)
    res = {'ms': since(t0), 'err': err, 'sent': SENT}
    if MODE == 'memory':
        res['ret'] = 'bytes' if isinstance(r, bytes) else r
        res['sha'] = sha256(r) if isinstance(r, bytes) else None
        res['len'] = len(r) if isinstance(r, bytes) else None
    else:
        res['ret'] = r
        res['sha'] = hexdigest(h) if MODE == 'stream' else sha256_file(OUT)
        res['len'] = got[0] if MODE == 'stream' else size(OUT)
    res['part'] = size(OUT + '.part')
    res['resume_pos'] = DownloadManager.get_resume_position(OUT)
    await DownloadManager.close_session()
    res['session'] = DownloadManager.is_session_active()
    result(**res)

run(main())
"""

OLD = b"previous content of the outfile\n" * 10
OLD_SHA = __import__("hashlib").sha256(OLD).hexdigest()
FAIL = {"memory": None, "file": False, "stream": False}
MODES = ["memory", "file", "stream"]


def dl(mpy, url, mode="memory", old=None, part=None, resume=False, tune=None, **kw):
    r = mpy.run(ONE, URL=url, MODE=mode, OUT="out.bin", OLD=old, PART=part, RESUME=resume, TUNE=tune or {}, KW=kw)
    v = dict(r.value)
    v["stderr"] = r.stderr
    return v


def ok(v, n, seed=0, text=False):
    """The download succeeded with exactly the n bytes of /bytes/n?seed=."""
    assert v["err"] is None, v
    assert v["ret"] in ("bytes", True), v
    assert (v["sha"], v["len"]) == (sha256_of(n, seed, text), n), v


def failed(v, mode):
    """The download failed the documented way and left the previous outfile untouched."""
    assert v["err"] is None, v
    assert v["ret"] is FAIL[mode], v
    if mode == "file":
        assert v["sha"] == OLD_SHA, "outfile changed on failure: %r" % v


def resumed_at(sent, upto):
    """The second request continued the first with "Range: bytes=K-", 0 < K <= upto (a TCP reset may discard
    the last bytes the server sent); -> K."""
    rng = sent[1][0]
    assert rng.startswith("bytes=") and rng.endswith("-"), sent
    k = int(rng[6:-1])
    assert 0 < k <= upto, sent
    return k


def prefix_sha(n, k, start=0):
    # sha256 of bytes [start, k) of /bytes/n
    return __import__("hashlib").sha256(payload(n)[start:k]).hexdigest()


# --- integrity ------------------------------------------------------------------------------------------------

# Every attempt cuts the body short and the server ignores Range, so no retry can complete it.
SHORT_BODIES = {
    "short-content-length": "/bytes/20000?truncate=7000&norange=1",
    # (norange: a resume would get a 416 that confirms the bytes held are the whole resource, and complete)
    "chunked-without-last-chunk": "/bytes/20000?chunked=1&nolast=1&norange=1",
    "gzip-stream-without-end": "/bytes/20000?gztrunc=1&text=1",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(SHORT_BODIES))
def test_incomplete_body_is_a_failure_in_every_mode(mpy, fault, kind, mode):
    v = dl(mpy, fault.url(SHORT_BODIES[kind]), mode, old=OLD, timeout=2)
    failed(v, mode)
    assert v["ms"] < 5000, v


def test_truncated_body_with_raise_errors_is_not_success(mpy, fault):
    v = dl(mpy, fault.url("/bytes/20000?truncate=7000&norange=1"), "file", old=OLD, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][1] in ("network", "integrity"), v
    assert v["sha"] == OLD_SHA


@pytest.mark.parametrize("mode", MODES)
def test_gzip_body_is_decoded_whole(mpy, fault, mode):
    # Content-Length counts the compressed bytes: it must not cut the decoded body short
    v = dl(mpy, fault.url("/bytes/200000?gzip=1&text=1"), mode, old=OLD)
    ok(v, 200000, text=True)


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_a_gzip_body_whose_connection_closes_is_written_whole(mpy, fault, chunk_size):
    # Decoded bytes still wait once the connection went (its close ended the body): file mode's straight lane,
    # which reads from the socket itself, has none to read from, and the awaited reads hand them out
    v = dl(mpy, fault.url("/bytes/134?gzip=1&cl=0"), "file", old=OLD, chunk_size=chunk_size)
    ok(v, 134)


@pytest.mark.parametrize("mode", MODES)
def test_gzip_body_cut_short_starts_over_or_fails(mpy, fault, mode):
    # Range would count compressed bytes: a coded body is never resumed, file and memory mode start over
    v = dl(mpy, fault.url("/bytes/200000?gzip=1&text=1&truncate=12000&key=g"), mode, old=OLD)  # (after output began)
    if mode == "stream":
        failed(v, mode)
        assert v["sha"] == __import__("hashlib").sha256(text_payload(200000)[:v["len"]]).hexdigest(), v
    else:
        ok(v, 200000, text=True)
        assert v["sent"] == [[None, None], [None, None]], v


@pytest.mark.parametrize("mode", MODES)
def test_sha256_verified_while_streaming(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/30000"), mode, old=OLD, sha256=sha256_of(30000))
    ok(v, 30000)
    v = dl(mpy, fault.url("/bytes/30000"), mode, old=OLD, sha256=sha256_of(30000, seed=1))
    failed(v, mode)
    v = dl(mpy, fault.url("/bytes/30000"), mode, old=OLD, sha256=sha256_of(30000, seed=1), raise_errors=True)
    assert v["ret"] == "raised" and v["err"][:2] == ["IntegrityError", "integrity"], v
    if mode == "file":
        assert v["sha"] == OLD_SHA


def test_sha256_checked_across_a_resume(mpy, fault):
    v = dl(mpy, fault.url("/bytes/50000?truncate=20000&key=a"), "file", sha256=sha256_of(50000))
    ok(v, 50000)
    assert v["sent"][1][0] == "bytes=20000-", v
    v = dl(mpy, fault.url("/bytes/50000?truncate=20000&key=b"), "file", old=OLD, sha256=sha256_of(50000, seed=3))
    failed(v, "file")


# --- files are atomic -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/status/404", "/bytes/20000?truncate=5000&norange=1", "/bytes/20000?drop=0"])
def test_failure_keeps_previous_outfile(mpy, fault, path):
    v = dl(mpy, fault.url(path), "file", old=OLD)
    failed(v, "file")


def test_failure_without_previous_outfile_leaves_none(mpy, fault):
    v = dl(mpy, fault.url("/bytes/20000?truncate=5000&norange=1"), "file")
    assert v["ret"] is False and v["err"] is None, v
    assert v["sha"] is None and v["len"] == -1, v
    assert v["part"] == 5000 and v["resume_pos"] == 5000, v  # the partial stays for a resume



ONE_OUTFILE = PRE + """
async def main():
    with open("out.bin", "wb") as f:
        f.write(OLD)
    first = asyncio.create_task(DownloadManager.download_url(SLOW, outfile="out.bin"))
    await asyncio.sleep_ms(50)  # the first is writing out.bin.part
    spelled = SPELLED.replace("CWD", os.getcwd())  # out.bin, as the second download names it
    try:
        second = await DownloadManager.download_url(FAST, outfile=spelled, raise_errors=True)
    except DownloadManager.LocalFileError as e:
        second = e.reason
    third = await DownloadManager.download_url(FAST, outfile=spelled)  # the same, the documented way
    result(second=second, third=third, first=await first, sha=sha256_file("out.bin"),
           left=[name for name in os.listdir() if name.startswith("out.bin.")])
run(main())
"""


@pytest.mark.parametrize("spelled", ["out.bin", "./out.bin", "CWD//out.bin", "out.bin.part", "out.bin.part.state"])
def test_a_second_download_to_an_outfile_being_downloaded_fails_and_the_first_ends_whole(mpy, fault, spelled):
    # Two writers of one .part would mix their bytes, and the second to finish would find the .part gone; a path
    # spelled otherwise names the same .part. A download to the first's .part (or its .state) would rename its own
    # bytes onto the file the first is writing, and the first then hand them out as out.bin.
    v = mpy.run(ONE_OUTFILE, SLOW=fault.url("/bytes/100000?rate=400000"), FAST=fault.url("/bytes/3000"),
                OLD=OLD, SPELLED=spelled).value
    assert v == {"second": "file", "third": False, "first": True, "sha": sha256_of(100000), "left": []}, v


def test_a_part_removed_during_the_download_leaves_the_outfile_as_it_was(mpy, fault):
    # (an app, or a cleanup, removed OUTFILE.part while the download wrote it)
    v = mpy.run(PRE + """
with open("out.bin", "wb") as f:
    f.write(OLD)
def progress(percent):
    if percent >= 50 and "out.bin.part" in os.listdir():
        os.remove("out.bin.part")
ok = DownloadManager.download_url(URL, outfile="out.bin", progress_callback=progress)
result(ok=ok, sha=sha256_file("out.bin"))
""", URL=fault.url("/bytes/100000?rate=400000"), OLD=OLD).value
    assert v == {"ok": False, "sha": OLD_SHA}, v

def test_resume_recipe_from_partial_file(mpy, fault):
    # A first attempt dies after 5000 bytes; the spec's recipe then completes it with a Range request, and
    # If-Range with the validator the first answer gave, kept beside the .part.
    fault.force = {"truncate": "5000", "norange": "1"}
    v = dl(mpy, fault.url("/bytes/20000"), "file", old=OLD)
    failed(v, "file")
    assert v["part"] == 5000 and v["resume_pos"] == 5000
    fault.force = {}
    # same tmp dir: the .part is still there
    v = dl(mpy, fault.url("/bytes/20000"), "file", resume=True)
    ok(v, 20000)
    assert v["sent"] == [["bytes=5000-", '"20000-0"']], v
    assert v["part"] == -1 and v["resume_pos"] == 20000


def test_resume_recipe_from_partial_outfile_itself(mpy, fault):
    # The partial bytes sit in outfile (an older version of the app wrote it directly).
    v = dl(mpy, fault.url("/bytes/40000"), "file", old=payload(40000)[:12345], resume=True)
    ok(v, 40000)
    assert v["sent"] == [["bytes=12345-", None]], v


def test_resume_recipe_memory_mode_gives_the_rest(mpy, fault):
    v = mpy.run(PRE + """
async def main():
    r = await DownloadManager.download_url(URL, headers={'Range': 'bytes=1000-'})
    result(sha=sha256(r), n=len(r))
run(main())
""", URL=fault.url("/bytes/5000")).value
    assert v == {"sha": __import__("hashlib").sha256(payload(5000)[1000:]).hexdigest(), "n": 4000}


def test_resume_when_server_answers_200_starts_over_cleanly(mpy, fault):
    # The partial holds wrong bytes; the server ignores Range (200): the file must be the full, exact body.
    v = dl(mpy, fault.url("/bytes/20000?norange=1"), "file", old=OLD, part=b"x" * 3000, resume=True)
    ok(v, 20000)
    assert v["sent"][0] == ["bytes=3000-", None]


def test_resume_of_complete_file_416_is_success(mpy, fault):
    v = dl(mpy, fault.url("/bytes/8000"), "file", old=payload(8000), resume=True)
    ok(v, 8000)
    assert v["sent"] == [["bytes=8000-", None]] and fault.requests == 1, v


def test_resume_of_a_complete_file_past_max_size_fails(mpy, fault):
    # the 416 confirms 8000 bytes held: more than max_size allows, as if they had come now
    v = dl(mpy, fault.url("/bytes/8000"), "file", old=OLD, part=payload(8000), resume=True, max_size=5000,
           raise_errors=True)
    assert v["err"][:2] == ["DownloadError", "error"] and "max_size" in v["err"][-1], v
    assert v["sha"] == OLD_SHA, v


def test_resume_of_complete_file_starts_over_on_a_416_that_names_no_size(mpy, fault):
    # apache's 416 has no Content-Range: the bytes held can't be confirmed, so the resource comes whole (before, the
    # recipe failed with a copy of the file in .part, and so did every later try of it)
    v = dl(mpy, fault.url("/bytes/8000?bare416=1"), "file", old=payload(8000), resume=True)
    ok(v, 8000)
    assert v["sent"] == [["bytes=8000-", None], [None, None]] and v["part"] == -1, v


@pytest.mark.parametrize("limit", [{"kw": {"tries": 1}}, {"tune": {"max_reconnects": 0}}],
                         ids=["tries=1", "no-reconnects"])
def test_a_start_over_after_a_416_spends_no_try(mpy, fault, limit):
    # the 416 is no failure of the link: the download asks again at once and gets the resource whole, even when it
    # may not try twice (before, it failed with "starting over" and the next call got the file)
    v = dl(mpy, fault.url("/bytes/8000?bare416=1"), "file", old=payload(8000), resume=True, tune=limit.get("tune"),
           **limit.get("kw", {}))
    ok(v, 8000)
    assert v["sent"] == [["bytes=8000-", None], [None, None]] and v["part"] == -1, v


# Answers to the resume of a body cut after 1000 bytes that make the download start over, and the requests file and
# memory mode make: the 416 start-overs spend no try, the others one each, and bytes got again are no progress.
# (In stream mode the chunks handed out can't be taken back: it fails at the first.)
CUT_THEN_START_OVER = {
    "416-naming-another-size": ("/bytes/1000?length=5000", [None] + ["bytes=1000-", None] * 3),
    "206-starting-elsewhere": ("/bytes/5000?key=a&times=99&truncate=1000&crange=bytes%200-3999/5000",
                               [None, "bytes=1000-", None, "bytes=1000-"]),
    "206-of-another-version": ("/bytes/5000?key=a&times=99&truncate=1000&churn=1&ifrange=ignore",
                               [None, "bytes=1000-", None, "bytes=1000-"]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("answer", sorted(CUT_THEN_START_OVER))
def test_bytes_got_again_after_a_start_over_are_no_progress(mpy, fault, answer, mode):
    # Each try starts over and gets the same 1000 bytes: no progress, so the 3 tries end it (before, each counted as
    # progress and only max_reconnects did, after 11 requests and ~50 s of waits)
    path, asked = CUT_THEN_START_OVER[answer]
    v = dl(mpy, fault.url(path), mode, old=OLD, tune={"retry_base_ms": 5, "retry_max_ms": 20})
    failed(v, mode)
    assert [r for r, _ in v["sent"]] == (asked if mode != "stream" else [None, "bytes=1000-"]), v


class _StartsOverShorterAndLonger(http.server.BaseHTTPRequestHandler):
    """Ignores Range (every answer is the whole resource: the download starts over) and cuts the body after 1000
    bytes, then 500, then 1000 again, and so on."""
    protocol_version = "HTTP/1.1"
    body = payload(5000)

    def do_GET(self):
        self.server.ranges.append(self.headers.get("Range"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: 500 if len(self.server.ranges) % 2 == 0 else 1000])
        self.close_connection = True

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_a_start_over_is_no_progress_until_it_passes_the_most_held(mpy, mode):
    # Each try starts over: 1000 bytes, 500, then 1000 again. The third brings no byte past the 1000 held after the
    # first: 3 tries without progress end it (before, the mark fell to the 500 held when the third was asked for, its
    # 1000 counted as progress, and only max_reconnects ended the download, after 11 requests).
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StartsOverShorterAndLonger)
    srv.ranges = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        v = dl(mpy, "http://127.0.0.1:%d/r" % srv.server_address[1], mode, old=OLD,
               tune={"retry_base_ms": 5, "retry_max_ms": 20})
    finally:
        srv.shutdown()
        srv.server_close()
    failed(v, mode)
    assert srv.ranges == [None, "bytes=1000-", "bytes=500-", "bytes=1000-"], srv.ranges


class _Bad206(http.server.BaseHTTPRequestHandler):
    """Answers a Range request with 206 and a Content-Range that does not start where asked (or none)."""
    protocol_version = "HTTP/1.1"
    body = payload(10000)

    def do_GET(self):
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        if rng:
            self.send_response(206)
            if "nocr" not in self.path:
                self.send_header("Content-Range", "bytes 0-%d/%d" % (len(self.body) - 1, len(self.body)))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


@pytest.fixture
def bad206():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bad206)
    srv.ranges = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path", ["/wrong-start", "/nocr"])
def test_206_with_wrong_content_range_is_never_appended(mpy, bad206, path):
    url = "http://127.0.0.1:%d%s" % (bad206.server_address[1], path)
    # file mode: the partial's 4000 bytes are not followed by the 206's bytes 0..; it starts over, exact
    v = dl(mpy, url, "file", part=payload(10000)[:4000], resume=True)
    ok(v, 10000)
    assert bad206.ranges[0] == "bytes=4000-" and bad206.ranges[-1] is None, bad206.ranges
    # stream mode: a resume after a drop is impossible here; the bytes handed out must never be wrong
    v = dl(mpy, url, "stream", headers={"Range": "bytes=4000-"})
    assert v["ret"] is False or v["sha"] == __import__("hashlib").sha256(payload(10000)[4000:]).hexdigest(), v


# --- recovering by itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_dropped_connection_resumes_with_range_and_if_range(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/100000?drop=30000&key=d"), mode, old=OLD)
    ok(v, 100000)
    resumed_at(v["sent"], 30000)
    assert v["sent"][0] == [None, None] and v["sent"][1][1] == '"100000-0"' and len(v["sent"]) == 2, v
    assert fault.requests == 2


@pytest.mark.parametrize("mode", MODES)
def test_body_closed_early_resumes_exactly_where_it_stopped(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/100000?truncate=30000&key=t"), mode, old=OLD)
    ok(v, 100000)
    assert v["sent"] == [[None, None], ["bytes=30000-", '"100000-0"']], v


def test_dropped_connection_without_etag_uses_last_modified(mpy, fault):
    # etag= empty: the server still sends Last-Modified, which then validates the resume
    v = dl(mpy, fault.url("/bytes/50000?drop=10000&key=d&etag="), "file")
    ok(v, 50000)
    resumed_at(v["sent"], 10000)
    assert v["sent"][1][1] == "Wed, 21 Oct 2015 07:28:00 GMT", v


@pytest.mark.parametrize("cut", ["truncate", "drop"])
def test_several_drops_all_recovered(mpy, fault, cut):
    # Every answer ends after 9000 bytes. Closed (FIN), each cut is one reconnect: all 9000 bytes arrive. Reset
    # (RST), the kernel may throw away what the client had not read yet, more of it the busier the machine: each
    # attempt gains bytes, but how many is not ours to say. (The waits between tries are
    # test_retry_after_is_honoured_and_capped's and the flapping-link test's subject.)
    v = dl(mpy, fault.url("/bytes/60000?%s=9000" % cut), "file", old=OLD,
           tune={"retry_base_ms": 10, "max_reconnects": 60})
    ok(v, 60000)
    assert fault.requests == 7 if cut == "truncate" else fault.requests >= 7


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_server_ignoring_range_restarts_from_zero(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/50000?drop=20000&key=n&norange=1"), mode, old=OLD)
    ok(v, 50000)
    assert fault.requests == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_whole_answer_to_a_callers_range_gives_the_range(mpy, fault, mode):
    # the server ignores Range and sends the whole resource with its length: the range is cut from it, and the
    # rest of the body is left unread (it is no sign of a wrong answer)
    v = dl(mpy, fault.url("/bytes/50000?norange=1"), mode, headers={"Range": "bytes=1000-1999"})
    assert v["ret"] in ("bytes", True) and v["sha"] == prefix_sha(50000, 2000, start=1000), v


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("start", [3000, 5000])
def test_a_callers_range_past_the_end_fails_as_a_416_whether_or_not_the_server_honours_range(mpy, fault, mode, start):
    # the resource has 3000 bytes: none of the range exists, which a whole answer to it shows as well as a 416 says,
    # whether it announces its length or only ends (chunked, or coded: the length counts other bytes)
    for query in ("", "?norange=1", "?norange=1&chunked=1", "?norange=1&gzip=1"):
        v = dl(mpy, fault.url("/bytes/3000" + query), mode, old=OLD, raise_errors=True,
               headers={"Range": "bytes=%d-" % start})
        assert v["err"][:3] == ["HTTPError", "http", 416], v
        if mode == "file":
            assert v["sha"] == OLD_SHA and v["part"] == -1, v
        elif mode == "stream":
            assert v["len"] == 0, v


def test_server_ignoring_range_fails_stream_mode(mpy, fault):
    v = dl(mpy, fault.url("/bytes/50000?drop=20000&key=n&norange=1"), "stream")
    failed(v, "stream")
    # what was handed out is exactly the start of the body, nothing repeated
    assert 0 < v["len"] <= 20000 and v["sha"] == prefix_sha(50000, v["len"]), v


@pytest.mark.parametrize("mode", MODES)
def test_stalled_read_is_a_try_and_is_resumed(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/80000?stall=25000&stall_s=5&key=s"), mode, old=OLD, timeout=0.5)
    ok(v, 80000)
    assert v["sent"][1][0] == "bytes=25000-" and len(v["sent"]) == 2, v
    assert 400 < v["ms"] < 2500, v


def test_stalls_every_time_fail_within_the_budget(mpy, fault):
    # no byte ever: 3 tries, each 0.5 s, plus backoff
    v = dl(mpy, fault.url("/bytes/80000?stall=0&stall_s=5"), "file", old=OLD, timeout=0.5, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][1] == "timeout", v
    assert fault.requests == 3 and v["ms"] < 4000, v
    assert v["sha"] == OLD_SHA


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_transient_status_is_retried(mpy, fault, code):
    v = dl(mpy, fault.url("/bytes/10000?fail=%d&key=t&times=1" % code), "file", old=OLD)
    ok(v, 10000)
    assert fault.requests == 2


def test_transient_failures_within_a_budget_of_3_tries(mpy, fault):
    v = dl(mpy, fault.url("/bytes/10000?fail=503&key=t&times=2"), "memory")
    ok(v, 10000)
    assert fault.requests == 3
    fault.reset()
    v = dl(mpy, fault.url("/bytes/10000?fail=503&key=t&times=3"), "file", old=OLD, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][1:3] == ["http", 503], v
    assert fault.requests == 3 and v["sha"] == OLD_SHA


def test_backoff_is_exponential_with_jitter(mpy, fault):
    # two failed tries wait ~0.25 s then ~0.5 s (each scaled by a random 0.5..1.5)
    v = dl(mpy, fault.url("/bytes/1000?fail=500&key=b&times=2"), "memory")
    ok(v, 1000)
    assert 300 <= v["ms"] <= 1300, v


def test_retry_after_is_honoured_and_capped(mpy, fault):
    v = mpy.run(PRE + """
async def one(url, **kw):
    t0 = time.ticks_ms()
    r = await DownloadManager.download_url(url, **kw)
    return [sha256(r) if r else None, since(t0)]
async def main():
    DownloadManager.retry_max_ms = 1500  # (the cap is 10 s by default)
    a, b, c = await asyncio.gather(one(URL1), one(URL2), one(URL3, deadline=1))
    result(a=a, b=b, c=c)
run(main())
""", URL1=fault.url("/bytes/1000?fail=503&retry_after=1&key=a&times=1"),
        URL2=fault.url("/bytes/1000?fail=429&retry_after=86400&key=b&times=1"),
        URL3=fault.url("/bytes/1000?fail=503&retry_after=86400&key=c&times=1"), timeout=40).value
    assert v["a"][0] == sha256_of(1000) and 950 <= v["a"][1] < 1450, v  # waited as told
    assert v["b"][0] == sha256_of(1000) and 1450 <= v["b"][1] < 2500, v  # a day capped to the cap
    assert v["c"][0] is None and v["c"][1] < 1000, v  # a wait past the deadline is not even started


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410])
def test_permanent_status_fails_at_once(mpy, fault, code):
    v = dl(mpy, fault.url("/bytes/10000?fail=%d" % code), "file", old=OLD, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][:3] == ["HTTPError", "http", code], v
    assert fault.requests == 1 and v["ms"] < 500, v
    assert v["sha"] == OLD_SHA and v["part"] <= 0, v


def test_refused_connection_fails_at_once(mpy):
    url = refused_url("/x.bin")
    v = dl(mpy, url, "file", old=OLD, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][1] == "network", v
    assert v["ms"] < 500 and v["sha"] == OLD_SHA, v
    v = dl(mpy, url, "memory")
    failed(v, "memory")
    assert v["ms"] < 500


def test_deadline_bounds_the_whole_download(mpy, fault):
    # a slow body (50 KB/s for 1 MB = 20 s) and a stall, each with a 1 s deadline
    v = dl(mpy, fault.url("/bytes/1000000?rate=50000"), "file", old=OLD, deadline=1, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][1] == "timeout", v
    assert 900 <= v["ms"] < 1600 and v["sha"] == OLD_SHA, v
    v = dl(mpy, fault.url("/bytes/1000?stall=10&stall_s=5"), "memory", deadline=1)
    failed(v, "memory")
    assert 900 <= v["ms"] < 1600, v


@pytest.mark.parametrize("deadline", [2 ** 63 - 1, 1e30, -1e30])
def test_a_deadline_beyond_what_ticks_count_is_no_error(mpy, fault, deadline):
    # sys.maxsize seconds or a computed 1e30 is no deadline at all; -1e30 is one long past
    v = dl(mpy, fault.url("/bytes/3000"), "file", old=OLD, deadline=deadline, raise_errors=True)
    if deadline > 0:
        ok(v, 3000)
    else:
        assert v["ret"] == "raised" and v["err"][1] == "timeout" and v["sha"] == OLD_SHA, v


# 7 days is more than a 32-bit port's ticks_ms can time (an ESP32's: ticks_add refuses 6.2 days), 30 days more than a
# machine word of milliseconds: such a deadline is none, such a timeout waits as long as ticks can (about 3 days), and
# the download goes through
@pytest.mark.parametrize("days", [7, 30])
@pytest.mark.parametrize("mode,kw", [("memory", {}), ("file", {}), ("stream", {}), ("file", {"segments": 2})],
                         ids=MODES + ["segments"])
def test_a_deadline_and_timeout_of_days_still_download(mpy, fault, mode, kw, days):
    s = days * 86400
    ok(dl(mpy, fault.url("/bytes/50000"), mode, old=OLD, deadline=s, timeout=s, raise_errors=True, **kw), 50000)


# --- failing well ---------------------------------------------------------------------------------------------

def test_raise_errors_reasons(mpy, fault, tmp_path):
    v = mpy.run(PRE + """
async def why(url, **kw):
    try:
        r = await DownloadManager.download_url(url, raise_errors=True, **kw)
        return ['returned', repr(r)]
    except DownloadManager.DownloadError as e:
        return describe(e)
async def main():
    res = {}
    res['http'] = await why(BASE + '/status/404')
    res['network'] = await why(REFUSED)
    res['timeout'] = await why(BASE + '/bytes/1000?stall=0&stall_s=5', timeout=0.3, tries=1)
    res['deadline'] = await why(BASE + '/bytes/1000?stall=0&stall_s=5', deadline=0.5)
    res['integrity'] = await why(BASE + '/bytes/1000', sha256='0' * 64)
    res['file'] = await why(BASE + '/bytes/1000', outfile='no/such/dir/x.bin')
    res['default'] = await DownloadManager.download_url(BASE + '/status/404')
    res['default_file'] = await DownloadManager.download_url(BASE + '/status/404', outfile='x.bin')
    result(**res)
run(main())
""", BASE=fault.base, REFUSED=refused_url("/")).value
    assert v["http"][1:3] == ["http", 404], v
    assert v["network"][1] == "network"
    assert v["timeout"][1] == "timeout"
    assert v["deadline"][1] == "timeout"
    assert v["integrity"][1] == "integrity"
    assert v["file"][1] == "file"
    assert v["default"] is None and v["default_file"] is False


def test_each_way_a_connection_fails_ends_as_docs_decisions_says(mpy, fault, unanswered_port):
    # -> per failure: the reason, whether the error says another try may help, is_network_error(), and the attempts
    # made of tries=2 (sockets made; lookups for the name that does not resolve; socket() calls for no socket free)
    v = mpy.run(PRE + """
import aiohttp.connection
from socketbudget import Budget
DownloadManager.retry_base_ms = DownloadManager.retry_max_ms = 1
budget = Budget(100).install()
lookups = []
def no_such_name(host, port, *args, real=aiohttp.connection._getaddrinfo):
    if host != "nowhere.invalid":
        return real(host, port, *args)
    lookups.append(host)
    raise OSError(-2)
aiohttp.connection._getaddrinfo = no_such_name

async def why(url, sockets=100, **kw):
    budget.sockets, budget.opened, budget.refused = sockets, 0, 0
    del lookups[:]
    try:
        r = await DownloadManager.download_url(url, raise_errors=True, tries=2, timeout=0.3, **kw)
        return ['returned', repr(r)]
    except DownloadManager.DownloadError as e:
        return [e.reason, e.retry, DownloadManager.is_network_error(e), budget.opened + budget.refused + len(lookups)]

async def main():
    res = {}
    res['refused'] = await why(REFUSED)
    res['no such name'] = await why('http://nowhere.invalid/x')
    res['connect timeout'] = await why(UNANSWERED)
    res['read timeout'] = await why(BASE + '/bytes/1000?stall=0&stall_s=5')
    res['reset'] = await why(BASE + '/bytes/3000?drop=0')
    res['no socket free'] = await why(BASE + '/bytes/3000', sockets=0)
    result(**res)
run(main())
""", BASE=fault.base, REFUSED=refused_url("/"), UNANSWERED="http://127.0.0.1:%d/x" % unanswered_port).value
    assert v == {"refused": ["network", False, True, 1], "no such name": ["network", True, True, 2],
                 "connect timeout": ["timeout", True, True, 2], "read timeout": ["timeout", True, True, 2],
                 "reset": ["network", True, True, 2], "no socket free": ["network", True, True, 2]}, v


PROGRAMMER_ERRORS = {
    "url-none": "dict(url=None)",
    "url-empty": "dict(url='')",
    "url-ftp": "dict(url='ftp://127.0.0.1/x')",
    "url-no-scheme": "dict(url='127.0.0.1/x')",
    "header-crlf": "dict(url=U, headers={'X-A': 'a\\r\\nX-Evil: 1'})",
    "header-lf-name": "dict(url=U, headers={'X\\nB': 'a'})",
    "total-size-negative": "dict(url=U, total_size=-1)",
    "progress-not-callable": "dict(url=U, progress_callback='nope')",
    "chunk-not-callable": "dict(url=U, chunk_callback=42)",
    "outfile-and-chunk": "dict(url=U, outfile='x.bin', chunk_callback=print)",
    "misspelt-keyword": "dict(url=U, outfile='x.bin', chunk_sise=4096)",
    "unknown-keyword": "dict(url=U, callback=print)",
    "timeout-str": "dict(url=U, outfile='x.bin', timeout='5')",
    "deadline-str": "dict(url=U, outfile='x.bin', deadline='5')",
    "tries-str": "dict(url=U, outfile='x.bin', tries='3')",
    "priority-str": "dict(url=U, outfile='x.bin', priority='high')",
    "timeout-bool": "dict(url=U, outfile='x.bin', timeout=True)",
}


def test_programmer_errors_raise_before_any_traffic(mpy, fault):
    v = mpy.run(PRE + """
U = BASE + '/bytes/100'
async def main():
    res = {}
    for name, src in CASES.items():
        kw = eval(src)
        try:
            r = await DownloadManager.download_url(**kw)
            res[name] = ['returned', repr(r)]
        except (ValueError, TypeError) as e:
            res[name] = [type(e).__name__, exists('x.bin')]
    result(**res)
run(main())
""", BASE=fault.base, CASES=PROGRAMMER_ERRORS).value
    for name in PROGRAMMER_ERRORS:
        assert v[name][0] in ("ValueError", "TypeError") or issubclass(
            {"InvalidURL": ValueError}.get(v[name][0], object), ValueError), (name, v[name])
        assert v[name][1] is False, name
    assert fault.connections == 0


@pytest.mark.parametrize("outfile", ["missing/dir/out.bin", "/proc/self/nope/out.bin", "/proc/out.bin"])
def test_unwritable_outfile_fails_quickly_and_leaves_nothing(mpy, fault, outfile):
    v = mpy.run(PRE + """
async def main():
    t0 = time.ticks_ms()
    r = await DownloadManager.download_url(URL, outfile=OUT)
    result(r=r, ms=since(t0), out=exists(OUT), part=exists(OUT + '.part'))
run(main())
""", URL=fault.url("/bytes/50000"), OUT=outfile).value
    assert v["r"] is False and v["ms"] < 500 and not v["out"] and not v["part"], v


# --- cancellation ---------------------------------------------------------------------------------------------

CANCEL = PRE + """
async def main():
    DownloadManager.session_idle_ms = 300
    base = fd_count()
    cancelled = kept = 0
    for rnd in range(10):
        tasks = []
        for i in range(10):
            n = rnd * 10 + i
            # cancel at any moment: queued, connecting, in the head, mid-body (stalled after 3000 bytes)
            t = (n % 10) * 0.035
            out = 'c%d.bin' % n
            kw = {'outfile': out} if n % 3 else {}
            if n % 3 == 2:
                kw = {'chunk_callback': lambda b: None}
            tasks.append(TaskManager.wait_for(DownloadManager.download_url(URL, **kw), t))
        for r in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(r, asyncio.TimeoutError):
                cancelled += 1
            else:
                raise AssertionError('not cancelled: %r' % (r,))
    for n in range(100):
        if n % 3 == 1 and size('c%d.bin.part' % n) == 3000:
            kept += 1
    assert not DownloadManager.downloads(), DownloadManager.downloads()
    await asyncio.sleep(0.6)  # the idle window
    idle_closed = not DownloadManager.is_session_active()
    await DownloadManager.close_session()
    after = fd_count()
    tasks_left = len(TaskManager.task_list)
    # the next download works
    r = await DownloadManager.download_url(GOOD, outfile='good.bin')
    await DownloadManager.close_session()
    result(cancelled=cancelled, kept=kept, base=base, after=after, idle_closed=idle_closed,
           tasks=tasks_left, good=r, sha=sha256_file('good.bin'), outs=[exists('c%d.bin' % n) for n in range(100)],
           end=fd_count(), session=DownloadManager.is_session_active())
run(main())
"""


def test_100_cancellations_leak_nothing(mpy, fault):
    v = mpy.run(CANCEL, URL=fault.url("/bytes/100000?stall=3000&stall_s=2"), GOOD=fault.url("/bytes/30000")).value
    assert v["cancelled"] == 100
    assert v["kept"] >= 10, v  # partials of cancelled file downloads stay for a resume
    assert not any(v["outs"]), v  # a cancelled download never creates outfile
    assert v["after"] == v["base"] and v["end"] == v["base"], v
    assert v["idle_closed"] and v["tasks"] == 0 and not v["session"], v
    assert v["good"] is True and v["sha"] == sha256_of(30000), v


# A file download of STALL cancelled after 0.5 s, then the spec's resume recipe with GOOD.
CANCELLED_RESUME = PRE + """
async def main():
    with open('o.bin', 'wb') as f:
        f.write(OLD)
    try:
        await TaskManager.wait_for(DownloadManager.download_url(STALL, outfile='o.bin'), 0.5)
    except asyncio.TimeoutError:
        pass
    pos = DownloadManager.get_resume_position('o.bin')
    same = slurp('o.bin') == OLD
    r = await DownloadManager.download_url(GOOD, outfile='o.bin', headers={'Range': 'bytes=%d-' % pos})
    await DownloadManager.close_session()
    result(pos=pos, same=same, r=r, sha=sha256_file('o.bin'), sent=SENT)
run(main())
"""


def test_a_weak_etag_is_never_sent_as_if_range(mpy, fault):
    # RFC 9110 13.1.5: a client never sends a weak entity tag in If-Range, and no server lets one match (it sends the
    # whole resource again). The resume after a cut sends none, and goes on from where the cut left it.
    v = dl(mpy, fault.url("/bytes/100000?drop=30000&key=w&etag=W/%22x%22"), "file", old=OLD)
    ok(v, 100000)
    k = resumed_at(v["sent"], 30000)
    assert v["sent"][1][1] is None and len(v["sent"]) == 2, v
    assert fault.served == 30000 + 100000 - k


def test_cancelled_resume_keeps_partial_and_previous_outfile(mpy, fault):
    url = fault.url("/bytes/50000?stall=21000&stall_s=3&key=cancelled&times=1")  # stalls once
    v = mpy.run(CANCELLED_RESUME, OLD=OLD, STALL=url, GOOD=url).value
    assert v["pos"] == 21000 and v["same"], v
    assert v["r"] is True and v["sha"] == sha256_of(50000) and v["sent"][-1] == ["bytes=21000-", '"50000-0"'], v


# --- low memory -----------------------------------------------------------------------------------------------

# Loading the library from .mpy files puts its bytecode in the heap: aiohttp + DownloadManager take ~69 KB of it
# on the unix port. Frozen into the binary (as in a device's firmware), the bytecode stays out of the heap: ~24 KB
# is left in it then (module dicts, classes). FREE: None, or the bytes to leave free in one piece after the imports.
LEAN_FILE = """
import gc
from mpos import DownloadManager
import aiohttp
import mpos.net.download  # with aiohttp.ClientSession below: what the first download loads, so that FREE is
aiohttp.ClientSession  # what the download itself has
keep = leave_free(FREE) if FREE else None
gc.collect()
free = gc.mem_free()
async def main():
    r = await DownloadManager.download_url(URL, outfile='big.bin')
    await DownloadManager.close_session()
    result(r=r, free=free, part=exists('big.bin.part'), file=aiohttp.__file__)
run(main())
"""


# As a device runs it: bytecode in flash (frozen firmware, or a romfs partition). Here the .mpy files sit in a ROMFS
# image whose bytecode runs in place; the image itself is read into the heap first, in one piece, and the heap is
# made that much larger, allocation tables included, so that it leaves what a 64 KB heap leaves on the device. No
# test helpers (they compile in the heap).
IN_FLASH = ROMFS_PRELUDE + SMALL_HEAP  # make bench's snippet: one download to OUT, the module's file reported


def test_file_mode_streams_3mb_in_a_64k_heap_with_the_code_in_flash(mpy, fault):
    image = mpy.tmpdir / "lib.romfs"
    image.write_bytes(romfs_image(mpy.lib(compiled=True)))
    heap = romfs_heapsize(64 * 1024, image.stat().st_size)
    v = mpy.run(IN_FLASH, URL=fault.url("/bytes/3000000"), heapsize=str(heap), bare=True, IMAGE=str(image),
                OUT=str(mpy.tmpdir / "big.bin")).value
    assert v["ok"] is True and v["file"].startswith("/rom/"), v
    assert sha256_file_of(mpy.tmpdir / "big.bin") == sha256_of(3000000)


def test_file_mode_streams_3mb_in_a_64k_heap_unless_the_code_is_loaded_into_it(mpy, fault, library_frozen):
    run = mpy.run(LEAN_FILE, URL=fault.url("/bytes/3000000"), heapsize="64k", compiled=True, check=False, FREE=None)
    if library_frozen:  # the interpreter runs the frozen copy (.frozen comes first on its path)
        assert run.value["r"] is True and run.value["file"] == "aiohttp/__init__.py", run.value
        assert sha256_file_of(mpy.tmpdir / "big.bin") == sha256_of(3000000)
    else:  # loaded from the .mpy files: the imports alone fill the heap
        out = run.stdout + run.stderr
        assert run.returncode != 0 and "MemoryError" in out and not run.results, out


def sha256_file_of(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_file_mode_streams_3mb_with_little_heap_left(mpy, fault):
    # 32 KB left in one piece once the code is loaded, whether it was loaded into the heap or is frozen
    v = mpy.run(LEAN_FILE, URL=fault.url("/bytes/3000000"), heapsize="192k", compiled=True, FREE=32 * 1024).value
    assert v["free"] < 36 * 1024, v  # what an app on a device may have left
    assert v["r"] is True and not v["part"], v
    assert sha256_file_of(mpy.tmpdir / "big.bin") == sha256_of(3000000)


# A heap with plenty free but cut into pieces, as a device's is after hours of UI work: no free run of 512 bytes.
CHOPPED = """
import gc, hashlib, binascii
from mpos import DownloadManager
import aiohttp

def chop():
    n = gc.mem_free() // 400
    pieces = [None] * (n + 64)  # made first: nothing below allocates but the pieces
    i = 0
    try:
        while i < n:
            pieces[i] = bytearray(400)
            i += 1
    except MemoryError:
        pass
    i = 0
    while i < n:
        pieces[i] = None  # every other one: holes of ~400 bytes between pieces still held
        i += 2
    gc.collect()
    try:
        while i < n + 64:  # plug any run still long enough for 512 bytes (the heap's ends, import leftovers)
            pieces[i] = bytearray(512)
            i += 1
    except MemoryError:
        pass
    return pieces, i < n + 64

h = hashlib.sha256()
longest = [0]

async def ignore(chunk):
    pass

async def take(chunk):
    h.update(chunk)
    longest[0] = max(longest[0], len(chunk))

async def main():
    # the same download once, small: what the library and asyncio make once per process (tables that grow as names
    # are first bound, the interned names a frozen build adds) exists before the heap is cut, as on a device that
    # has run for hours
    await DownloadManager.download_url(URL[: URL.rfind("/")] + "/3000", chunk_callback=ignore)
    await DownloadManager.close_session()
    pieces, chopped = chop()  # everything global exists by now: the module's dict need not grow
    r = await DownloadManager.download_url(URL, chunk_callback=take)
    await DownloadManager.close_session()
    gc.collect()  # garbage is room too: without this, free said when the collector last ran
    free = gc.mem_free()
    pieces = None
    result(r=r, chopped=chopped, free=free, sha=binascii.hexlify(h.digest()).decode(), longest=longest[0])

run(main())
"""


def test_a_chopped_heap_with_no_room_for_a_whole_chunk_still_downloads(mpy, fault):
    # Reads fall back to a smaller buffer (and the response head to a short line buffer) instead of failing:
    # chunk callbacks are promised at most chunk_size bytes.
    v = mpy.run(CHOPPED, URL=fault.url("/bytes/300000"), heapsize="168k", compiled=True).value
    # the point: room in total (at times 32 bytes short of 16 KB), none in one piece
    assert v["chopped"] and v["free"] > 12 * 1024, v
    assert v["r"] is True and v["sha"] == sha256_of(300000), v
    # chunks no longer than chunk_size: smaller where the heap had no room (a read that then finds none after all,
    # the heap's garbage having taken it, ends the request, and the next resumes after the last chunk in smaller
    # ones: the exact bytes above prove no chunk was lost or handed out twice)
    assert 0 < v["longest"] <= 1024, v


# Synchronous calls (no loop runs: a script) made with ever less of the heap free, 0 to 2 KB in one piece: the
# download, or the loop that would run it, finds no room. A call that did not say True has nothing of it run later,
# in the loop of the next call (one with room, as an app's next one).
CALLS_IN_A_FULL_HEAP = """
from mpos import DownloadManager
DownloadManager.download_url(URL, outfile="warm")  # what the first call loads, loaded
base = fd_count()
outfiles = ["out%d" % i for i in range(STEPS)]  # (made first: the loop below makes nothing of its own)
said = [None] * STEPS
for i in range(STEPS):
    ballast = leave_free(i * 8)
    try:
        said[i] = DownloadManager.download_url(URL, outfile=outfiles[i])
    except MemoryError as e:  # (the call itself may find no heap for its frame: nothing of it is made then)
        said[i] = "MemoryError"
    ballast = None
    DownloadManager.download_url(URL, outfile="warm")
result(said=said, fds=fds_left(base), later=[name for name in outfiles if exists(name)], warm=sha256_file("warm"))
"""


def test_a_call_in_a_full_heap_that_fails_has_nothing_of_it_run_later(mpy, fault):
    v = mpy.run(CALLS_IN_A_FULL_HEAP, heapsize="256k", URL=fault.url("/bytes/20000"), STEPS=256).value
    assert True not in v["said"], v  # no room for a download in any of them
    assert v["later"] == [] and v["fds"] == [] and v["warm"] == sha256_of(20000), v


# A synchronous call whose loop finds no heap to begin (asyncio's run_until_complete allocates before it runs the
# first task; so may what comes before it: FAILS names the call made to fail here, once) says so as documented, and
# its task never runs in a later loop.
NO_HEAP_FOR_THE_LOOP = """
import asyncio
from mpos import DownloadManager
base = fd_count()
owner = asyncio.Loop if FAILS == "run_until_complete" else asyncio
real = getattr(owner, FAILS)
failing = [True]
def failing_once(*args):
    if failing[0]:
        failing[0] = False
        raise MemoryError("memory allocation failed, allocating 32 bytes")
    return real(*args)
setattr(owner, FAILS, failing_once)
try:
    if CALL == "post":
        said = DownloadManager.post_url(URL, data=b"sent")
    else:
        said = DownloadManager.download_url(URL, outfile="first" if CALL == "file" else None,
                                            raise_errors=CALL == "raise")
except Exception as e:
    said = [type(e).__name__, e.reason]
after = DownloadManager.download_url(URL, outfile="after")
result(said=repr(said), after=after, first=exists("first") or exists("first.part"), fds=fds_left(base))
"""


@pytest.mark.parametrize("call, said", [("file", "False"), ("memory", "None"), ("post", "None"),
                                        ("raise", "['OutOfMemory', 'memory']")])
@pytest.mark.parametrize("fails", ["get_event_loop", "run_until_complete"])
def test_a_call_whose_loop_finds_no_heap_to_begin_fails_as_documented(mpy, fault, call, said, fails):
    url = fault.url("/bytes/20000?key=" + call)
    v = mpy.run(NO_HEAP_FOR_THE_LOOP, URL=url, CALL=call, FAILS=fails).value
    assert v == {"said": said, "after": True, "first": False, "fds": []}, v
    assert [request.method for request in fault.log] == ["GET"], fault.log  # the call after: the failed one never ran


def test_a_ctrl_c_in_the_cleanup_after_a_loop_with_no_heap_reaches_the_caller(mpy, fault):
    # The loop found no heap to begin the call (a MemoryError: the documented failure follows) and Ctrl-C came while
    # the loop ran the cleanup after it: the caller gets the KeyboardInterrupt (it got None, the Ctrl-C dropped)
    v = mpy.run("""
import asyncio
from mpos import DownloadManager
real = asyncio.Loop.run_until_complete
faults = [MemoryError("memory allocation failed, allocating 32 bytes"), KeyboardInterrupt()]
def failing(*args):
    if faults:
        raise faults.pop(0)
    return real(*args)
asyncio.Loop.run_until_complete = failing
try:
    said = repr(DownloadManager.download_url(URL))
except KeyboardInterrupt:
    said = "KeyboardInterrupt"
asyncio.Loop.run_until_complete = real
result(said=said, after=sha256(DownloadManager.download_url(URL)))
""", URL=fault.url("/bytes/2000")).value
    assert v == {"said": "KeyboardInterrupt", "after": sha256_of(2000)}, v


def test_a_post_with_no_heap_for_the_session_returns_none(mpy, fault):
    v = mpy.run("""
from mpos import DownloadManager
from mpos.net import admission
made = admission.acquire_session
def no_heap(*args):
    raise MemoryError("memory allocation failed, allocating 32 bytes")
async def main():
    admission.acquire_session = no_heap
    said = await DownloadManager.post_url(URL, data=b"sent")
    admission.acquire_session = made
    again = await DownloadManager.post_url(URL, data=b"sent")
    await DownloadManager.close_session()
    result(said=said, again=again is not None)
run(main())
""", URL=fault.url("/echo")).value
    assert v == {"said": None, "again": True}, v


@pytest.mark.parametrize("framing", ["", "&chunked=1"])
def test_memory_mode_larger_than_heap_returns_none(mpy, fault, framing):
    v = mpy.run("""
import gc, asyncio
from mpos import DownloadManager
ticks = [0]
async def ticker():
    while True:
        ticks[0] += 1
        await asyncio.sleep_ms(5)
async def main():
    t = asyncio.create_task(ticker())
    try:
        r = await DownloadManager.download_url(URL)
    except BaseException as e:  # nothing may escape, MemoryError least of all
        r = repr(e)
    before = ticks[0]
    await asyncio.sleep_ms(100)
    alive = ticks[0] > before
    t.cancel()
    small = await DownloadManager.download_url(SMALL)  # and the next download works
    await DownloadManager.close_session()
    result(r=r, alive=alive, small=sha256(small) if small else None)
run(main())
""", URL=fault.url("/bytes/200000?x=1" + framing), SMALL=fault.url("/bytes/2000"),
        heapsize="144k", compiled=True).value
    # 144 KB: the body (200 KB) still cannot fit. At 96 KB the ~64 KB of bytecode this port loads into RAM
    # (frozen firmware keeps it in flash) left the rest fragmented: whether the next download fit was luck.
    assert v == {"r": None, "alive": True, "small": sha256_of(2000)}



def test_many_bodies_held_in_memory_fit_a_heap_with_room_for_them(mpy, fault):
    # The App Store keeps every icon it fetched. Ten 100 KB bodies (1 MB) held at once, three fetched at a time,
    # in a 1.6 MB heap: each result needs a 100 KB hole while its buffer is alive, and the holes earlier buffers
    # leave must fit later results (they were one block too small: 3 of 10 failed with 0.8 MB free).
    v = mpy.run(PRE + """
async def main():
    DownloadManager.max_connections = 3
    got = await asyncio.gather(*[DownloadManager.download_url(URL) for i in range(10)])
    result(shas=[sha256(g) if g else None for g in got])
run(main())
""", URL=fault.url("/bytes/100000"), heapsize="1600k").value
    assert v["shas"] == [sha256_of(100000)] * 10, v

@pytest.mark.parametrize("mode", MODES)
def test_max_size_refuses_early_by_content_length(mpy, fault, mode):
    # 2 MB at 100 KB/s would take 20 s: refusing must not read the body
    v = dl(mpy, fault.url("/bytes/2000000?rate=100000"), mode, old=OLD, max_size=100000)
    failed(v, mode)
    assert v["ms"] < 500 and (mode != "stream" or v["len"] == 0), v
    assert v["part"] <= 0, v


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_max_size_also_bounds_a_body_of_unknown_length(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/300000?chunked=1"), mode, old=OLD, max_size=100000)
    failed(v, mode)
    v = dl(mpy, fault.url("/bytes/100000?chunked=1"), mode, old=OLD, max_size=100000)
    ok(v, 100000)


def test_a_body_of_unknown_length_within_max_size_is_not_given_room_past_it(mpy, fault):
    # Memory mode doubles its buffer for a body of unknown length (chunked; nginx's and apache's gzip): at 65 KB of
    # a 70000-byte body the next step was 131 KB, though max_size=70000 says no byte past 70000 will be kept. In
    # 260 KB free that failed with OutOfMemory (it needs about 300 KB); capped at max_size it fits (about 230 KB).
    v = mpy.run("""
from mpos import DownloadManager
async def main():
    await DownloadManager.download_url(WARM, max_size=70000)  # the imports and the session, before the heap is cut
    keep = leave_free(260000)
    try:
        data = await DownloadManager.download_url(URL, max_size=70000, raise_errors=True)
        got = sha256(data)
    except Exception as e:
        got = described(e)
    data = keep = None
    await DownloadManager.close_session()
    result(got=got)
run(main())
""", WARM=fault.url("/bytes/100?chunked=1"), URL=fault.url("/bytes/70000?chunked=1")).value
    assert v["got"] == sha256_of(70000), v


# --- concurrency ----------------------------------------------------------------------------------------------

CONCURRENT = PRE + """
async def one(url, out, cancel):
    coro = DownloadManager.download_url(url, outfile=out)
    if cancel:
        try:
            return await TaskManager.wait_for(coro, 0.3)
        except asyncio.TimeoutError:
            return 'cancelled'
    return await coro

async def main():
    DownloadManager.session_idle_ms = 200
    base = fd_count()
    for i, (url, cancel) in enumerate(JOBS):
        with open('f%d.bin' % i, 'wb') as f:
            f.write(OLD)
    rs = await asyncio.gather(*[one(url, 'f%d.bin' % i, c) for i, (url, c) in enumerate(JOBS)])
    await asyncio.sleep(0.5)
    idle_closed = not DownloadManager.is_session_active()
    await DownloadManager.close_session()
    result(rs=rs, shas=[sha256_file('f%d.bin' % i) for i in range(len(JOBS))], base=base, after=fd_count(),
           idle_closed=idle_closed, session=DownloadManager.is_session_active(), tasks=len(TaskManager.task_list))
run(main())
"""


@pytest.mark.parametrize("max_connections", [3, 16])
def test_many_simultaneous_downloads(mpy, fault, max_connections):
    good = [(20000 + 7000 * i, i) for i in range(10)]
    jobs = [(fault.url("/bytes/%d?seed=%d" % g), False) for g in good]
    jobs[3] = (jobs[3][0] + "&drop=9000&key=d3", False)  # recovered on the way
    jobs[6] = (jobs[6][0] + "&fail=503&key=f6&times=1", False)
    jobs += [(fault.url("/status/404"), False), (fault.url("/bytes/30000?truncate=1000&norange=1"), False),
             (fault.url("/bytes/30000?stall=2000&stall_s=2"), True),
             (fault.url("/bytes/30000?stall=0&stall_s=2"), True)]
    code = CONCURRENT.replace("DownloadManager.session_idle_ms = 200",
                              "DownloadManager.session_idle_ms = 200\n    DownloadManager.max_connections = %d"
                              % max_connections)
    v = mpy.run(code, JOBS=jobs, OLD=OLD).value
    assert v["rs"] == [True] * 10 + [False, False, "cancelled", "cancelled"], v
    assert v["shas"] == [sha256_of(n, s) for n, s in good] + [OLD_SHA] * 4
    assert v["after"] == v["base"] and v["idle_closed"] and not v["session"] and v["tasks"] == 0, v


MIXED = PRE + """
async def one(i, url, mode):
    if mode == "memory":
        got = await DownloadManager.download_url(url)
        return sha256(got) if got else None
    if mode == "file":
        ok = await DownloadManager.download_url(url, outfile="m%d.bin" % i)
        return sha256_file("m%d.bin" % i) if ok else None
    h = new_sha()
    async def cb(chunk):
        await asyncio.sleep_ms(0)  # the others run while this chunk is in the callback's hands
        h.update(chunk)
    ok = await DownloadManager.download_url(url, chunk_callback=cb)
    return hexdigest(h) if ok else None

async def main():
    DownloadManager.max_connections = 16
    rs = await asyncio.gather(*[one(i, url, mode) for i, (url, mode) in enumerate(JOBS)])
    result(rs=rs)
run(main())
"""


def test_simultaneous_downloads_in_every_mode_never_mix_bytes(mpy, fault):
    # Downloads on one event loop share one read buffer. Different bytes per download, a server that sends in
    # small paced pieces (every read waits, so the downloads take turns), every mode at once: each exact.
    good = [(30000 + 1000 * i, i) for i in range(9)]
    jobs = [(fault.url("/bytes/%d?seed=%d&rate=100000" % g), MODES[i % 3]) for i, g in enumerate(good)]
    v = mpy.run(MIXED, JOBS=jobs).value
    assert v["rs"] == [sha256_of(n, s) for n, s in good], v


# --- security -------------------------------------------------------------------------------------------------

TLS = PRE + """
async def main():
    res = {}
    for name, ca in CAS:
        DownloadManager.ca = ca
        try:
            r = await DownloadManager.download_url(URL, raise_errors=True)
            res[name] = sha256(r)
        except DownloadManager.DownloadError as e:
            res[name] = describe(e)[:2]
    result(**res)
run(main())
"""


def test_tls_verified_when_a_ca_is_configured(mpy, fault_tls, certs):
    v = mpy.run(TLS, URL=fault_tls.url("/bytes/20000"), CAS=[
        ("none", None), ("right", certs.ca_der_path), ("right_pem", certs.ca_pem_path),
        ("wrong", certs.other_ca_der_path)]).value
    assert v["none"] == sha256_of(20000)  # no CA configured: not verified, as documented for devices
    assert v["right"] == v["right_pem"] == sha256_of(20000)
    assert v["wrong"] == ["TLSError", "tls"], v  # a server the CA did not sign: refused, never retried into success


def test_redact_url_keeps_path_and_query_out_of_the_log(mpy, fault):
    code = PRE + """
async def main():
    r = await DownloadManager.download_url(URL, redact_url=REDACT)
    result(r=r)
run(main())
"""
    url = fault.url("/status/404?apikey=SECRET123&path=wallet")
    r = mpy.run(code, URL=url, REDACT=True)
    assert r.value == {"r": None}
    assert "127.0.0.1" in r.stderr and "404" in r.stderr, r.stderr
    assert "SECRET123" not in r.stdout + r.stderr and "/status" not in r.stderr and "wallet" not in r.stderr
    r = mpy.run(code, URL=url, REDACT=False)  # control: the same failure, logged in full
    assert "SECRET123" in r.stderr
