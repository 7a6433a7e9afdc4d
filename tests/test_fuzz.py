"""Fuzzing: every answer a server can give ends in exactly the resource's bytes or a clean failure.

tools/fuzz.py makes the cases (well-formed answers in every framing, mutated at random from a seed) and judges
each result; tests/mpy/fuzzclient.py runs them on MicroPython, through the aiohttp client (read(),
content.readinto(buf), content.read(n)) and DownloadManager's three modes, in one long-lived process.

    make test                                   # seed "fuzz", for about 30 s
    FUZZ_SEED=random FUZZ_SECONDS=600 ...       # a fresh seed (printed with any failure), for 10 minutes
    FUZZ_SEED=S FUZZ_CASE=I ...                 # case I of seed S alone; python tools/fuzz.py S I shows it
"""
import os
import random
import time

from tools import fuzz

SEED = os.environ.get("FUZZ_SEED", "fuzz")
SECONDS = float(os.environ.get("FUZZ_SECONDS", "30"))
ONLY = os.environ.get("FUZZ_CASE")
MAX_DEFECTS = 10  # a run stops early once it has this many to show
RERUN = ".venv/bin/python -m pytest -q tests/test_fuzz.py"


def run_case(server, client, workdir, case):
    """-> (the result MicroPython reported, what was wrong with it)"""
    url, good_url = server.add(case)
    job = fuzz.job(case, url, good_url, workdir)
    for path in (job["got"], job["outfile"], "%s.part" % job["outfile"], "%s.part.state" % job["outfile"]):
        if path and os.path.exists(path):
            os.remove(path)
    if case.old_file:
        with open(job["outfile"], "wb") as f:
            f.write(fuzz.OLD)
    result = client.run(job)
    return result, fuzz.judge(case, job, result)


def test_every_mutated_answer_gives_exact_bytes_or_a_clean_failure(tmp_path, certs):
    seed = "%08x" % random.getrandbits(32) if SEED == "random" else SEED
    indexes = [int(ONLY)] if ONLY else range(10 ** 9)
    end = time.monotonic() + SECONDS
    outcomes = {}
    defects = []
    with fuzz.FuzzServer() as plain, fuzz.FuzzServer(certs) as tls, fuzz.Client(tmp_path) as client:
        for i in indexes:
            if time.monotonic() > end or len(defects) >= MAX_DEFECTS:
                break
            case = fuzz.make_case(seed, i)
            result, problems = run_case(tls if case.tls else plain, client, tmp_path, case)
            outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
            if problems:
                defects.append("%s\n  %s\n  repro: FUZZ_SEED=%s FUZZ_CASE=%d %s" % (
                    "\n".join("- " + p for p in problems), fuzz.describe(case), seed, i, RERUN))
    ran = sum(outcomes.values())
    assert not defects, "seed %s: %d of %d cases went wrong (outcomes %s):\n\n%s" % (
        seed, len(defects), ran, outcomes, "\n\n".join(defects))
    # the cases exercise both ways a download may end
    assert ONLY or outcomes.get("ok", 0) > ran // 5 and outcomes.get("fail", 0) > ran // 10, outcomes


def test_the_oracle_reads_a_206_behind_a_1xx_head_as_a_206():
    # Seed 8d981be1 case 1408: a 206 (Content-Range 85-591, close-delimited) after a 103 Early Hints head, cut 5
    # bytes short, then the same answer to the resume: no correct client may succeed. The oracle once looked for
    # "HTTP/1.1 206" at the answer's first byte and demanded a success.
    case = fuzz.make_case("8d981be1", 1408)
    assert case.well_formed.startswith(b"HTTP/1.1 103") and fuzz.decode(case.well_formed).status == 206
    assert not fuzz._must_succeed(case)


def test_a_few_cases_are_long_and_cut_near_the_fair_share():
    # Long cases (LONG_SHARE) reach what no short one does: DownloadManager's straight lane (file mode, nothing
    # else per chunk) over plain TCP and TLS taking its turn after each FAIR_SHARE bytes, and the body's end.
    cases = [fuzz.make_case("fuzz", i) for i in range(3000)]
    long = [c for c in cases if c.long]
    assert 0 < len(long) < len(cases) // 10
    assert all(fuzz.FAIR_SHARE <= len(c.resource) <= 300000 for c in long)
    straight = {c.tls for c in long if c.api == "dm" and c.mode == "file" and not c.sha and not c.progress}
    assert straight == {False, True}
    # where their answers are cut (closed, reset, stalled): near a multiple of FAIR_SHARE or near the end
    cuts = [(len(c.wire), len(c.well_formed)) for c in long if any(m.startswith(("close ", "reset ", "stall "))
                                                                     for m in c.mutations)]
    near = [end for end, whole in cuts if min(end % fuzz.FAIR_SHARE, -end % fuzz.FAIR_SHARE) <= 5000
            or whole - end <= 5000]
    assert len(near) >= 0.9 * len(cuts) > 10


def test_the_oracle_judges_the_next_request_only_when_extra_bytes_came_with_the_answer():
    # Seed 1ong0001 case 20046: a 206 with Content-Length, then "0\r\n\r\n" the server wrote 2 ms after the body's
    # last byte; the client had sent its next request on the connection by then and read them as its answer. The
    # oracle once called that a defect: no client can tell such bytes from an answer.
    late = fuzz.make_case("1ong0001", 20046)
    assert late.mutations == ["appended 5 bytes after the answer: b'0\\r\\n\\r\\n'"]
    assert fuzz._late_extra_bytes(late)
    # the same bytes written with the body's end: a client finds them before it reuses the connection
    late.writes = [(cut, pause) for cut, pause in late.writes if cut < len(late.well_formed)]
    assert not fuzz._late_extra_bytes(late)


def test_the_oracle_lets_a_long_body_held_in_memory_fail():
    # Seed 1ong0001 case 36602: 286 KB to DownloadManager's memory mode, timing only, returned None after some 1600
    # long cases in one MicroPython process and succeeds alone: a heap that many cases fragmented may hold no
    # 286 KB piece, and the contract makes that a clean failure (OutOfMemory). A long body read in pieces (file,
    # stream, readinto, read(n)) must still come whole.
    case = fuzz.make_case("1ong0001", 36602)
    assert case.long and case.mode == "memory" and not case.changed
    assert not fuzz._must_succeed(case)
    case.mode = "file"
    assert fuzz._must_succeed(case)


def test_the_oracle_lets_a_range_past_a_close_delimited_body_fail():
    # Seed 406cce15 case 3021: Range bytes=6928-8518, answered by a close-delimited 200 cut after 2743 bytes of body:
    # taken whole, the resource ends before the range begins, which DownloadManager fails as a 416 (decisions.md)
    case = fuzz.make_case("406cce15", 3021)
    assert case.byte_range[0] > len(fuzz.decode(case.wire).body) and case.framing == "close"
    assert not fuzz._must_succeed(case)
