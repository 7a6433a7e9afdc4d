"""A download ends with exactly the bytes the server's resource holds, or fails cleanly, whatever the server answers
(issue 17): answers about ranges are checked, not trusted; framing and codings the client cannot read are errors,
never bytes handed on as the body; a gzip bomb is bounded. FaultServer gives each answer, MicroPython downloads it
in every mode, and each outcome is checked by sha256, or by the untouched outfile."""
import os
import signal
import subprocess
import time
from hashlib import sha256
from urllib.parse import quote

import pytest

from test_reliability import CANCELLED_RESUME, MODES, OLD, OLD_SHA, PRE, dl, failed, ok, prefix_sha, resumed_at
from tools.mpy import LIB, micropypath, micropython
from tools.testservers import ScriptServer, gzip_bomb, payload, sha256_of

REASONS = ("http", "network", "timeout", "integrity", "file", "memory", "tls", "error")  # DownloadError and its kinds


def fresh(v):
    """The last request asked for the whole resource, no Range: the download started over."""
    assert v["sent"][-1] == [None, None], v


def handed_out_nothing_wrong(v):
    """Stream mode failed, and what it handed out is exactly the start of /bytes/100000 as the download began."""
    failed(v, "stream")
    assert v["sha"] == prefix_sha(100000, v["len"]), v


def clean_error(v):
    """raise_errors=True raised a DownloadError (it has a reason), not an exception from inside the library."""
    assert v["ret"] == "raised" and v["err"][1] in REASONS, v


# --- a resource that changes under a download -------------------------------------------------------------------

# The first answer is cut after 30000 bytes; by the time the download resumes, the resource has changed.
CHANGES = {
    # h2o and twisted: If-Range ignored, the 206 comes with the new ETag
    "if-range-ignored": "/bytes/100000?drop=30000&key=c&newer=2&ifrange=ignore",
    # the same validator, but the resumed answer's Content-Range total is not the first answer's size
    "total-changed": "/bytes/100000?drop=30000&key=c&newer=2&grow=5000&etag=%22fixed%22",
    # the bytes stay, the ETag changes (servers behind a load balancer), If-Range ignored
    "etag-changed": "/bytes/100000?drop=30000&key=c&newer=2&tagonly=1&ifrange=ignore",
    # it shrank to the 30000 bytes held, If-Range ignored: the resume's 416 names 30000, not the size first seen
    "shrank-to-what-is-held": "/bytes/100000?truncate=30000&key=c&newer=2&grow=-70000&ifrange=ignore",
    # a weak ETag (apache's for a file changed within the last second): no If-Range may name it, and a Range alone
    # is served from the new version; only the 206's other ETag tells
    "weak-etag": "/bytes/100000?drop=30000&key=c&newer=2&weak=1",
}
NEW = {"if-range-ignored": (100000, 1), "total-changed": (105000, 1), "etag-changed": (100000, 0),
       "shrank-to-what-is-held": (30000, 1), "weak-etag": (100000, 1)}


@pytest.mark.parametrize("mode", ["memory", "file"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_an_answer_from_another_version_makes_file_and_memory_mode_start_over(mpy, fault, change, mode):
    v = dl(mpy, fault.url(CHANGES[change]), mode, old=OLD)
    ok(v, *NEW[change])
    fresh(v)


@pytest.mark.parametrize("mode", ["memory", "file", "stream"])
def test_a_weak_etag_that_turns_strong_is_still_the_same_version(mpy, fault, mode):
    # apache weakens the ETag of a file changed within the last second, and a second later sends the same tag
    # strong: compared weakly (RFC 9110 8.8.3.2) it names the same version, and the resume goes on, even in stream mode
    v = dl(mpy, fault.url("/bytes/100000?drop=30000&key=f&weak=first"), mode, old=OLD)
    ok(v, 100000)
    k = resumed_at(v["sent"], 30000)
    assert len(v["sent"]) == 2 and v["sent"][1][1] is None, v  # (no If-Range names a weak ETag)
    assert fault.served == 30000 + 100000 - k


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_an_answer_from_another_version_fails_stream_mode(mpy, fault, change):
    handed_out_nothing_wrong(dl(mpy, fault.url(CHANGES[change]), "stream"))
    v = dl(mpy, fault.url(CHANGES[change].replace("key=c", "key=r")), "stream", raise_errors=True)
    clean_error(v)
    assert change == "total-changed" or v["err"][0] == "NetworkError", v  # If-Range named another version


def test_a_resource_that_keeps_changing_fails_cleanly_within_a_bound(mpy, fault):
    # every answer is cut after 30000 bytes and comes from a newer version: no two answers ever fit together
    url = fault.url("/bytes/100000?key=k&times=1000&churn=1&drop=30000&ifrange=ignore")
    quick = {"retry_base_ms": 5, "retry_max_ms": 20}  # (the waits between tries are another test's)
    v = dl(mpy, url, "file", old=OLD, tune=quick)
    failed(v, "file")
    assert fault.requests <= 20, fault.requests
    v = dl(mpy, url, "memory", tune=quick)
    failed(v, "memory")


# The documented resume recipe after a download that stopped at 30000 bytes (it stalls there): with the resource
# unchanged it continues; changed on the server, it starts over; a .part made from another URL is never continued.
def resume_url(changed, server, key):
    url = "/bytes/100000?stall=30000&stall_s=3&key=%s" % key
    return url + ("&newer=2" if changed else "") + ("&ifrange=ignore" if server == "ignores If-Range" else "")


@pytest.mark.parametrize("server", ["honours If-Range", "ignores If-Range"])
@pytest.mark.parametrize("changed", [False, True])
def test_the_resume_recipe_after_a_cancel_checks_the_validator(mpy, fault, changed, server):
    url = fault.url(resume_url(changed, server, "a"))
    v = mpy.run(CANCELLED_RESUME, STALL=url, GOOD=url, OLD=OLD).value
    assert v["pos"] == 30000 and v["r"] is True, v
    assert v["sha"] == sha256_of(100000, seed=1 if changed else 0), v
    assert v["sent"][1] == ["bytes=30000-", '"100000-0"'], v  # If-Range: the version the .part holds


@pytest.mark.parametrize("changed", [False, True])
def test_the_resume_recipe_under_a_weak_etag_checks_it_without_if_range(mpy, fault, changed):
    # The .part's record keeps the weak ETag: no If-Range names it, but a 206 of another version starts over
    url = fault.url(resume_url(changed, "honours If-Range", "w") + "&weak=1")
    v = mpy.run(CANCELLED_RESUME, STALL=url, GOOD=url, OLD=OLD).value
    assert v["pos"] == 30000 and v["r"] is True, v
    assert v["sha"] == sha256_of(100000, seed=1 if changed else 0), v
    assert v["sent"][1] == ["bytes=30000-", None], v
    assert v["sent"][2:] == ([[None, None]] if changed else []), v  # changed: the whole resource asked again


def test_the_resume_recipe_never_continues_a_part_made_from_another_url(mpy, fault):
    first, other = fault.url("/bytes/100000?stall=30000&stall_s=3"), fault.url("/bytes/100000?seed=2")
    v = mpy.run(CANCELLED_RESUME, STALL=first, GOOD=other, OLD=OLD).value
    assert v["pos"] == 30000 and v["r"] is True and v["sha"] == sha256_of(100000, seed=2), v


RANGE_THEN_RECIPE = PRE + """
async def main():
    DownloadManager.max_reconnects = 0
    first = await DownloadManager.download_url(URL, outfile=OUT, headers={"Range": RANGE}, tries=1)
    pos = DownloadManager.get_resume_position(OUT)
    DownloadManager.max_reconnects = 10
    r = await DownloadManager.download_url(URL, outfile=OUT, headers={"Range": "bytes=%d-" % pos} if pos else None)
    result(first=first, pos=pos, r=r, sha=sha256_file(OUT), n=size(OUT), sent=SENT)
run(main())
"""


@pytest.mark.parametrize("asked", ["bytes=10000-", "bytes=10000-19999"])
def test_the_resume_recipe_never_continues_a_part_of_a_callers_range(mpy, fault, asked):
    # A file-mode download of a caller's range, cut after 5000 bytes, leaves a .part of bytes 10000-14999 whose record
    # named this URL: the resume recipe continued it from byte 5000, and a file of the wrong 30000 bytes was a success
    v = mpy.run(RANGE_THEN_RECIPE, URL=fault.url("/bytes/30000?drop=5000&key=p"), OUT="out.bin", RANGE=asked).value
    assert v["first"] is False and v["r"] is True, v
    assert (v["sha"], v["n"]) == (sha256_of(30000), 30000), v


KILLME = """
from mpos import DownloadManager
DownloadManager.download_url(URL, outfile='out.bin')
"""


def kill_when_part_has(mpy, url, n):
    """Run a file download of url in a MicroPython process and SIGKILL it (no cleanup: a reboot) once out.bin.part
    holds n bytes."""
    script = mpy.tmpdir / "killme.py"
    script.write_text("URL = %r\n" % url + KILLME)
    part = mpy.tmpdir / "out.bin.part"
    proc = subprocess.Popen([micropython(), str(script)], cwd=str(mpy.tmpdir),
                            env=dict(os.environ, MICROPYPATH=micropypath(LIB)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (part.exists() and part.stat().st_size == n):
            assert time.time() - t0 < 10 and proc.poll() is None, "the download never reached %d bytes" % n
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


@pytest.mark.parametrize("server", ["honours If-Range", "ignores If-Range"])
@pytest.mark.parametrize("changed", [False, True])
def test_the_resume_recipe_after_the_process_was_killed_checks_the_validator(mpy, fault, changed, server):
    url = fault.url(resume_url(changed, server, "k"))
    kill_when_part_has(mpy, url, 30000)
    v = dl(mpy, url, "file", resume=True)
    ok(v, 100000, seed=1 if changed else 0)
    assert v["sent"][0] == ["bytes=30000-", '"100000-0"'], v


# --- 206 answers that are not what was asked ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("unasked", ["0-49999", "1000-"])
def test_a_206_to_a_request_for_everything_is_a_failure(mpy, fault, mode, unasked):
    v = dl(mpy, fault.url("/bytes/100000?unasked=" + unasked), mode, old=OLD)
    failed(v, mode)
    assert mode != "stream" or v["len"] == 0, v


@pytest.mark.parametrize("mode", MODES)
def test_a_206_that_covers_the_whole_resource_is_the_body(mpy, fault, mode):
    ok(dl(mpy, fault.url("/bytes/100000?unasked=0-"), mode, old=OLD), 100000)


@pytest.mark.parametrize("mode", MODES)
def test_a_short_206_is_continued_where_it_ended(mpy, fault, mode):
    # the resume is answered 20000 bytes at a time: each next request starts where the last 206 ended
    v = dl(mpy, fault.url("/bytes/100000?truncate=30000&key=s&rangemax=20000"), mode, old=OLD)
    ok(v, 100000)
    assert [r for r, _ in v["sent"]] == [None] + ["bytes=%d-" % k for k in (30000, 50000, 70000, 90000)], v


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_short_206_to_a_callers_range_is_continued(mpy, fault, mode):
    v = dl(mpy, fault.url("/bytes/50000?rangemax=20000"), mode, headers={"Range": "bytes=1000-"})
    assert v["ret"] in ("bytes", True) and v["sha"] == sha256(payload(50000)[1000:]).hexdigest(), v
    assert [r for r, _ in v["sent"]] == ["bytes=1000-", "bytes=21000-", "bytes=41000-"], v


# --- numbers past a machine word -----------------------------------------------------------------------------------

HUGE = [2 ** 62, 2 ** 70]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", HUGE)
def test_a_content_length_past_a_machine_word_is_a_clean_failure(mpy, fault, mode, value):
    # the server sends 1000 bytes and closes: nothing may try to make room for the length it announced
    url = fault.url("/bytes/1000?length=%d" % value)
    failed(dl(mpy, url, mode, old=OLD), mode)
    v = dl(mpy, url, mode, old=OLD, raise_errors=True)
    clean_error(v)
    assert mode != "memory" or v["err"][1] in ("memory", "http", "network"), v


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("end", ["real", "huge"])
@pytest.mark.parametrize("total", HUGE)
def test_a_content_range_past_a_machine_word_is_a_clean_failure(mpy, fault, mode, total, end):
    # The resumed answer is of no resource this download knows (another total): never appended. File and memory
    # mode may start over and get the whole resource from the plain answer that follows; stream mode can't.
    last = 99999 if end == "real" else total - 1
    url = fault.url("/bytes/100000?truncate=30000&key=h&crange=" + quote("bytes 30000-%d/%d" % (last, total)))
    v = dl(mpy, url, mode, old=OLD, raise_errors=True)
    if v["ret"] == "raised" or mode == "stream":
        clean_error(v)
        if mode == "file":
            assert v["sha"] == OLD_SHA, v
    else:
        ok(v, 100000)


READ = """
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for url in URLS:
            for how in ("read", "readinto"):
                try:
                    async with session.get(url) as resp:
                        if how == "read":
                            body = await resp.read()
                            sha, n = sha256(body), len(body)
                        else:
                            sha, n, reads = await sha_readinto(resp, 1000)
                    result(url=url, how=how, sha=sha, n=n)
                except aiohttp.ClientError as e:  # anything else escapes: the snippet fails with its traceback
                    result(url=url, how=how, err=type(e).__name__)
run(main())
"""


def read_every_way(mpy, urls):
    """Each URL read by aiohttp's read() and readinto() -> [outcome]; an exception that is no ClientError fails."""
    return mpy.run(READ, URLS=urls).results


def test_read_never_allocates_a_content_length_past_a_machine_word(mpy, fault):
    for got in read_every_way(mpy, [fault.url("/bytes/1000?length=%d" % v) for v in HUGE]):
        assert "err" in got or (got["sha"], got["n"]) == (sha256_of(1000), 1000), got


# --- framing and codings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_chunked_wins_over_a_content_length(mpy, fault, mode):
    ok(dl(mpy, fault.url("/bytes/20000?chunked=1&length=1000"), mode, old=OLD), 20000)


def never_reused(fault, marker):
    """No request came on a connection after an answer to a request whose target holds marker."""
    spent = {r.connection for r in fault.log if marker in r.target}
    for before, after in zip(fault.log, fault.log[1:]):
        assert not (before.connection in spent and after.connection == before.connection), [
            (r.connection, r.target) for r in fault.log]


def test_a_connection_that_sent_chunked_and_a_content_length_is_not_reused(mpy, fault):
    v = mpy.run(PRE + """
async def main():
    shas = []
    for url in URLS:
        r = await DownloadManager.download_url(url)
        shas.append(sha256(r) if r else None)
    await DownloadManager.close_session()
    result(shas=shas)
run(main())
""", URLS=[fault.url("/bytes/20000?chunked=1&length=1000"), fault.url("/bytes/3000")]).value
    assert v["shas"] == [sha256_of(20000), sha256_of(3000)], v
    never_reused(fault, "length=")
    fault.reset()
    got = read_every_way(mpy, [fault.url("/bytes/20000?chunked=1&length=1000"), fault.url("/bytes/3000")])
    assert [(g.get("sha"), g.get("n")) for g in got] == [(sha256_of(20000), 20000)] * 2 + [(sha256_of(3000), 3000)] * 2
    never_reused(fault, "length=")


# Transfer codings: only plain chunked is ours. Values are URL-encoded: %0D%0A%20 folds the header line; a form feed
# or a vertical tab (%0C, %0B) is no blank around a value, so "chunked\f" is another coding. ";chunked" names no
# coding, which is not none (close=1: a client that took it for none would read a body the close ends, and succeed).
TE_REFUSED = ["gzip, chunked", "x-custom, chunked", "chunkeda", "chunked%0C", "%0Bchunked", "%3Bchunked&close=1"]
TE_READ = ["Chunked", "%0D%0A%20chunked"]
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [None, 0, 5])
def test_a_204_has_no_body_whatever_length_it_names(mpy, fault, mode, length):
    # RFC 9112 section 6.3: a 204 ends at its head; a Content-Length on it names nothing that follows
    v = dl(mpy, fault.url("/status/204" + ("" if length is None else "?length=%d" % length)), mode, old=OLD)
    ok(v, 0)


# Content codings: gzip, x-gzip, deflate, identity, as tokens of a list; "none" and a charset (an S3 object's metadata)
# are what servers send meaning identity
CE_REFUSED = ["br", "compress", "x-custom", "%3Bgzip", "gzip%3Bq%3D1"]  # (a content coding takes no parameters)
CE_READ = ["identity, gzip", "gzip,", "%0D%0A%20gzip", "x-gzip", "GZIP", "none", "UTF-8"]


def coded(option, value):
    return "/bytes/20000?%s=%s" % (option, value.replace(" ", "%20"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", [coded("te", v) for v in TE_REFUSED] + [coded("ce", v) for v in CE_REFUSED])
def test_a_coding_the_client_cannot_read_is_a_failure_not_the_body(mpy, fault, mode, path):
    v = dl(mpy, fault.url(path), mode, old=OLD)
    failed(v, mode)
    assert mode != "stream" or v["len"] == 0, v  # not a coded byte handed out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", [coded("te", v) for v in TE_READ] + [coded("ce", v) for v in CE_READ])
def test_codings_are_matched_as_tokens(mpy, fault, mode, path):
    ok(dl(mpy, fault.url(path), mode, old=OLD), 20000)


@pytest.mark.parametrize("coding", ["none", "UTF-8"])
def test_a_body_coded_with_nothing_is_resumed_after_a_cut(mpy, fault, coding):
    # a Content-Encoding that codes nothing keeps the length and ranges of the bytes: a cut goes on from the .part
    v = dl(mpy, fault.url("/bytes/100000?ce=%s&drop=30000&key=uncoded-%s" % (coding, coding)), "file", old=OLD)
    ok(v, 100000)
    k = resumed_at(v["sent"], 30000)
    assert fault.served == 30000 + 100000 - k, v


@pytest.mark.parametrize("mode", MODES)
def test_gzip_twice_is_decoded_twice_or_refused(mpy, fault, mode):
    v = dl(mpy, fault.url(coded("ce", "gzip, gzip")), mode, old=OLD)
    if v["ret"] in ("bytes", True):
        ok(v, 20000)
    else:
        failed(v, mode)
        assert mode != "stream" or v["len"] == 0, v


def test_the_client_never_hands_on_coded_bytes(mpy, fault):
    refused = [coded("te", v) for v in TE_REFUSED] + [coded("ce", v) for v in CE_REFUSED]
    read = [coded("te", v) for v in TE_READ] + [coded("ce", v) for v in CE_READ]
    twice = coded("ce", "gzip, gzip")
    got = read_every_way(mpy, [fault.url(p) for p in refused + read + [twice]])
    assert len(got) == 2 * (len(refused) + len(read) + 1)
    exact = (sha256_of(20000), 20000)
    wrong = [g for g in got[:2 * len(refused)] if "err" not in g]
    wrong += [g for g in got[2 * len(refused):] if (g.get("sha"), g.get("n")) != exact
              and not ("err" in g and g["url"].endswith(twice))]
    assert not wrong, "\n".join(map(repr, wrong))


# --- a gzip bomb -----------------------------------------------------------------------------------------------------

BOMB = PRE + """
async def main():
    longest = [0]
    async def ticker():  # the UI: it must get a turn at least every 100 ms
        last = time.ticks_ms()
        while True:
            await asyncio.sleep_ms(5)
            now = time.ticks_ms()
            longest[0] = max(longest[0], time.ticks_diff(now, last))
            last = now
    t = asyncio.create_task(ticker())
    await asyncio.sleep_ms(20)
    got = [0]
    def count(chunk):
        got[0] += len(chunk)
    kw = dict(KW)
    if MODE == 'stream':
        kw['chunk_callback'] = count
    elif MODE == 'file':
        kw['outfile'] = 'out.bin'
    t0 = time.ticks_ms()
    try:
        r = await DownloadManager.download_url(URL, **kw)
        r = 'bytes' if isinstance(r, bytes) else r
    except Exception as e:
        r = describe(e)
    ms = since(t0)
    t.cancel()
    await DownloadManager.close_session()
    result(r=r, ms=ms, longest=longest[0], got=got[0], out=sha256_file('out.bin'))
run(main())
"""


# The time bounds below are loose on purpose (an idle machine: 20 ms at most between the ticker's turns, 0.5 s for
# the deadline's case); inflated whole, the bomb takes 14 s to a file, and inflated in one go it would hold the loop
# for seconds: a machine shared with other runs must not make them fail.
TURN_MS = 500


def bomb(mpy, fault, mode, **kw):
    gzip_bomb(200)  # made before the clock starts: the server makes it once
    with open(mpy.tmpdir / "out.bin", "wb") as f:
        f.write(OLD)
    return mpy.run(BOMB, URL=fault.url("/bytes/1?bomb=200"), MODE=mode, KW=kw).value


def test_a_gzip_bomb_is_stopped_by_max_size_while_other_tasks_run(mpy, fault):
    v = bomb(mpy, fault, "stream", max_size=256 << 10)
    assert v["r"] is False and v["got"] <= 256 << 10, v
    assert v["longest"] < TURN_MS and v["ms"] < 2000, v


def test_a_gzip_bomb_is_bounded_by_the_deadline(mpy, fault):
    v = bomb(mpy, fault, "file", deadline=0.5)
    assert v["r"] is False and v["out"] == OLD_SHA, v
    assert v["longest"] < TURN_MS and v["ms"] < 3000, v


def test_a_gzip_bomb_in_memory_mode_fails_cleanly(mpy, fault):
    v = bomb(mpy, fault, "memory", raise_errors=True)
    assert v["r"][1] in ("memory", "error"), v
    assert v["longest"] < TURN_MS and v["ms"] < 3000, v


# --- where an answer ends ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_an_answer_cut_after_its_last_byte_completes_on_the_416_that_confirms_it(mpy, fault, mode):
    # every byte came, the chunked body's end did not: the resume asks for the rest (If-Range), and the 416 that
    # names the whole resource's size says there is none
    v = dl(mpy, fault.url("/bytes/20000?chunked=1&nolast=1&key=n&times=1"), mode, old=OLD)
    ok(v, 20000)
    assert [r for r, _ in v["sent"]] == [None, "bytes=20000-"], v


# A server that names no validator (no ETag, no Last-Modified): the resume sends no If-Range, so what a 416 says of
# the bytes held can't be trusted, even when it names their count; the resource shrank to 5000 bytes, or did not.
# -> (the URL, where the resume asks from, the size and seed of the resource then)
NO_VALIDATOR = {
    "cut after its last byte": ("/bytes/20000?chunked=1&truncate=20000&key=v&novalidator=1", 20000, 20000, 0),
    "shrank": ("/bytes/20000?truncate=8000&key=v&newer=2&grow=-15000&novalidator=1", 8000, 5000, 1),
}


@pytest.mark.parametrize("mode", ["memory", "file"])
@pytest.mark.parametrize("case", sorted(NO_VALIDATOR))
def test_without_a_validator_a_416_to_the_resume_starts_over(mpy, fault, case, mode):
    path, resumed_at, n, seed = NO_VALIDATOR[case]
    v = dl(mpy, fault.url(path), mode, old=OLD)
    ok(v, n, seed)
    assert v["sent"] == [[None, None], ["bytes=%d-" % resumed_at, None], [None, None]], v


@pytest.mark.parametrize("mode", MODES)
def test_a_206_for_more_than_the_range_asked_gives_the_range(mpy, mode):
    # asked for bytes 0-99, the server sends 0-999, as its Content-Range says: the range's 100 bytes are the answer
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/1000\r\nContent-Length: 1000\r\n\r\n"
    with ScriptServer({"/r": [head + payload(1000), "close"]}) as srv:
        v = dl(mpy, srv.url("/r"), mode, old=OLD, headers={"Range": "bytes=0-99"}, raise_errors=True)
    assert v["ret"] in ("bytes", True) and v["sha"] == prefix_sha(1000, 100), v
    assert len(srv.requests) == 1, srv.requests


@pytest.mark.parametrize("mode", MODES)
def test_a_206_longer_than_its_content_range_is_no_answer(mpy, fault, mode):
    # the resumed answer says 2000 bytes and its body holds the 70000 to the end: what comes past what it announced
    # shows the answer is wrong, and what was taken of it is not trusted
    url = fault.url("/bytes/100000?truncate=30000&key=l&crange=" + quote("bytes 30000-31999/100000"))
    v = dl(mpy, url, mode, old=OLD, raise_errors=True, tune={"retry_base_ms": 5, "retry_max_ms": 20})
    if mode == "stream":
        clean_error(v)
    else:  # file and memory mode start over: the plain answer after it is the whole resource
        ok(v, 100000)
        assert [r for r, _ in v["sent"]] == [None, "bytes=30000-", None], v


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_coded_whole_answer_to_a_range_is_read_to_its_checksum(mpy, fault, mode):
    # a server that ignores Range and codes the whole resource: the range is cut from the decoded bytes, and the
    # body is read to its end, so a coded stream cut short fails instead of giving the range's bytes unchecked
    from tools.testservers import text_payload

    want = text_payload(20000)[1000:2000]
    v = dl(mpy, fault.url("/bytes/20000?gzip=1&text=1&norange=1"), mode, headers={"Range": "bytes=1000-1999"})
    assert v["ret"] in ("bytes", True) and v["sha"] == sha256(want).hexdigest(), v
    v = dl(mpy, fault.url("/bytes/20000?gztrunc=1&text=1&norange=1"), mode, headers={"Range": "bytes=1000-1999"})
    failed(v, mode)


@pytest.mark.parametrize("mode", MODES)
def test_a_coded_partial_answer_is_asked_again_whole(mpy, fault, mode):
    # A 206 whose Content-Encoding is gzip has a range of the gzip bytes (RFC 9110 section 14.1.1; h2o's
    # file.send-compressed and Node's http-server -g serve ranges of the .gz), which no decoder can start inside:
    # the resource is asked for again without a Range, at once (no try spent), and the range cut from it decoded
    want = payload(20000)
    if mode == "file":  # the resume recipe, OUTFILE.part holding the first 5000 bytes
        v = dl(mpy, fault.url("/bytes/20000?gzip=1"), mode, old=OLD, part=want[:5000], resume=True, tries=1,
               tune={"max_reconnects": 0})
        ok(v, 20000)
        assert v["sent"] == [["bytes=5000-", None], [None, None]], v
    else:
        v = dl(mpy, fault.url("/bytes/20000?gzip=1"), mode, headers={"Range": "bytes=1000-1999"}, tries=1,
               tune={"max_reconnects": 0})
        assert v["ret"] in ("bytes", True) and v["sha"] == sha256(want[1000:2000]).hexdigest(), v
        assert v["sent"] == [["bytes=1000-1999", None], [None, None]], v


@pytest.mark.parametrize("mode", MODES)
def test_a_416_to_a_range_that_invited_a_coding_is_asked_again_whole(mpy, fault, mode):
    # with the caller's Accept-Encoding: gzip, a server that codes ranges counts them in coded bytes: a range past the
    # 2 KB of gzip but inside the 20000 decoded bytes got a 416, and failed, where one inside the gzip got a coded 206,
    # was asked again whole and succeeded. The 416 is asked again whole too; a range past the decoded end still fails.
    from tools.testservers import text_payload

    want = text_payload(20000)[10000:11000]
    asked = {"Range": "bytes=10000-10999", "Accept-Encoding": "gzip"}
    v = dl(mpy, fault.url("/bytes/20000?gzip=1&text=1"), mode, old=OLD, headers=asked, tries=1,
           tune={"max_reconnects": 0})
    assert v["ret"] in ("bytes", True) and v["sha"] == sha256(want).hexdigest(), v
    assert v["sent"] == [["bytes=10000-10999", None], [None, None]], v
    v = dl(mpy, fault.url("/bytes/20000?gzip=1&text=1"), mode, old=OLD, headers=dict(asked, Range="bytes=30000-"),
           tries=1, raise_errors=True, tune={"max_reconnects": 0})
    assert v["err"][:3] == ["HTTPError", "http", 416], v
    assert v["sent"] == [["bytes=30000-", None], [None, None]], v


@pytest.mark.parametrize("mode", MODES)
def test_a_416_to_a_range_without_accept_encoding_is_asked_again_whole(mpy, fault, mode):
    # No Accept-Encoding lets a server use any coding (RFC 9110 section 12.5.3): apache 2.4 with `AddEncoding gzip
    # .gz` serves x.gz coded and counts a Range in its coded bytes, unasked. A range past the gzip but inside the
    # decoded bytes got a 416 and failed (with Accept-Encoding: gzip it was asked again whole and succeeded).
    # `Accept-Encoding: identity` refuses codings: its 416 is final.
    from tools.testservers import text_payload

    want = text_payload(20000)[10000:11000]
    url = fault.url("/bytes/20000?gzip=1&text=1")
    v = dl(mpy, url, mode, old=OLD, headers={"Range": "bytes=10000-10999"}, tries=1, tune={"max_reconnects": 0})
    assert v["ret"] in ("bytes", True) and v["sha"] == sha256(want).hexdigest(), v
    assert v["sent"] == [["bytes=10000-10999", None], [None, None]], v
    v = dl(mpy, url, mode, old=OLD, headers={"Range": "bytes=30000-"}, tries=1, raise_errors=True,
           tune={"max_reconnects": 0})
    assert v["err"][:3] == ["HTTPError", "http", 416], v
    assert v["sent"] == [["bytes=30000-", None], [None, None]], v
    v = dl(mpy, url, mode, old=OLD, headers={"Range": "bytes=10000-10999", "Accept-Encoding": "identity"}, tries=1,
           raise_errors=True, tune={"max_reconnects": 0})
    assert v["err"][:3] == ["HTTPError", "http", 416], v
    assert v["sent"] == [["bytes=10000-10999", None]], v


@pytest.mark.parametrize("mode", MODES)
def test_a_coded_206_to_a_request_for_everything_is_not_asked_again(mpy, fault, mode):
    # every request, Range or none, gets a 206 of the gzip bytes: one to a request without a Range is judged as any
    # 206 is (its length counts coded bytes: a failed try), not asked for again without a Range (it came again, at
    # once and with no try spent, until the deadline ended it: 1700 requests in 2 s)
    v = dl(mpy, fault.url("/bytes/20000?gzip=1&unasked=0-"), mode, old=OLD, tries=1, deadline=5,
           tune={"max_reconnects": 0})
    failed(v, mode)
    assert v["sent"] == [[None, None]], v


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_callers_range_asked_again_whole_is_cut_from_an_identity_answer(mpy, fault, mode):
    # the Range gets a coded 206, the request without one an identity 200 (two backends behind one name): the range
    # is cut from the 200 (it was handed on whole, past the range, once the coded 206 had been seen)
    want = payload(20000)[1000:2000]
    v = dl(mpy, fault.url("/bytes/20000?gzip=ranges"), mode, headers={"Range": "bytes=1000-1999"}, tries=1,
           tune={"max_reconnects": 0})
    assert v["ret"] in ("bytes", True) and v["sha"] == sha256(want).hexdigest(), v
    assert v["sent"] == [["bytes=1000-1999", None], [None, None]], v


@pytest.mark.parametrize("mode", MODES)
def test_a_range_whose_framing_is_cut_after_its_last_byte_is_complete(mpy, fault, mode):
    # every byte the 206 announced came, then the chunked body's end did not: nothing more came either, so the
    # range is whole (a resume would ask for bytes past its end)
    v = dl(mpy, fault.url("/bytes/5000?chunked=1&nolast=1"), mode, headers={"Range": "bytes=1000-1999"})
    assert v["ret"] in ("bytes", True) and v["sha"] == prefix_sha(5000, 2000, start=1000), v


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_a_framing_cut_after_a_206_that_gained_nothing_is_one_failed_try(mpy, fault, mode):
    # 206s of 20000 bytes each, every one without its chunked body's end. The third names a new version: the
    # download starts over, and the next 206 brings bytes it held before the start-over (no new ones). That is one
    # failed try of five, not the end of the download.
    url = fault.url("/bytes/100000?chunked=1&nolast=1&rangemax=20000&key=g%s&newer=3&ifrange=ignore" % mode)
    v = dl(mpy, url, mode, old=OLD, headers={"Range": "bytes=0-99999"}, tries=5, raise_errors=True,
           tune={"retry_base_ms": 1})
    ok(v, 100000, seed=1)
