# Random interleavings of the public API in one process (tests/test_api_sequences.py): actors on one event loop run
# the steps a plan made from a seed lists (downloads in the three modes with random keywords, cancels, close_session,
# post_url, downloads(), tunables, TaskManager tasks, an aiohttp request or websocket beside), then the invariants
# are checked. Every outcome and every broken invariant is one line of the log the pytest side reports with the seed.
import asyncio
import os

from mpos import DownloadManager, TaskManager
from testlib import exists, fd_count, sha256, sha256_file, size
from stepcancel import admission_is_free


class AppStop(Exception):
    # what an app's callback raises to stop its download (the OS updater's way)
    pass


class Sequence:
    def __init__(self, plan):
        self.plan = plan
        self.log = []  # one line per step outcome
        self.problems = []  # one line per broken invariant
        self.truth = {}  # resource name -> its bytes (the pytest side wrote them beside the snippet)
        self.old = {}  # outfile -> its bytes before the sequence
        self.allowed = {}  # outfile -> the sha256s it may end with
        self.flight = {}  # step id -> (task, step): downloads in flight
        self.cancelled = set()  # ids of the steps a canceller cancelled
        self.closed_during = set()  # ids of the steps in flight while close_session() ran
        self.shared = set()  # ids of the file steps in flight at once with another of the same outfile
        self.segmented_files = set()
        self.failures = 0  # failed calls: each may log one line
        self.stops = 0  # calls cancelled or timed out: a failure may have come in the same turn, and logged
        self.calls = {}  # url -> the calls made to it
        self.starts = {}  # outfile -> the file downloads of it begun so far

    def note(self, line):
        self.log.append(line)

    def wrong(self, line):
        self.problems.append(line)

    def resource(self, step):
        data = self.truth.get(step["res"])
        if data is None:
            with open(step["res"], "rb") as f:
                data = self.truth[step["res"]] = f.read()
        return data

    # -- the steps -------------------------------------------------------------------------------------------------

    async def actor(self, name, steps):
        mine = []
        held = [None, None]  # a websocket this actor keeps open across its steps, and its session
        try:
            await self.steps(name, steps, mine, held)
        finally:
            if held[1] is not None:
                await held[1].close()
        for task in mine:
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def steps(self, name, steps, mine, held):
        for step in steps:
            op = step["op"]
            try:
                if op == "dl":
                    if step.get("spawn"):
                        task = asyncio.create_task(self.download(step))
                        self.flight[step["id"]] = (task, step)
                        mine.append(task)
                    else:
                        me = asyncio.current_task()
                        self.flight[step["id"]] = (me, step)
                        try:
                            await self.download(step)
                        except asyncio.CancelledError:  # (the canceller meant the download: the actor goes on)
                            pass
                elif op == "cancel":
                    await self.cancel(step)
                elif op == "close":
                    for i in self.flight:
                        self.closed_during.add(i)
                    await DownloadManager.close_session()
                    self.note("%s close_session" % name)
                elif op == "post":
                    await self.post(step)
                elif op == "list":
                    self.check_listing()
                elif op == "active":
                    active = DownloadManager.is_session_active()
                    if active not in (True, False):
                        self.wrong("is_session_active() returned %r" % (active,))
                elif op == "tune":
                    setattr(DownloadManager, step["name"], step["value"])
                    self.note("%s %s = %r" % (name, step["name"], step["value"]))
                elif op == "tm":
                    await self.task_manager(step)
                elif op == "http":
                    await self.http(step)
                elif op == "ws":
                    await self.websocket(step)
                elif op == "wsheld":
                    await self.held_websocket(step, held)
                elif op == "resume":
                    n = DownloadManager.get_resume_position(step["outfile"])
                    if not isinstance(n, int) or n < 0:
                        self.wrong("get_resume_position returned %r" % (n,))
                elif op == "sleep":
                    if step.get("ms"):
                        await asyncio.sleep_ms(step["ms"])
                    for _ in range(step.get("turns", 0)):
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.wrong("%s: step %r: a CancelledError reached the actor" % (name, step))
                raise
            except Exception as e:
                self.wrong("%s: step %r raised %s: %s" % (name, step, type(e).__name__, e))

    def arguments(self, step, chunks, progress):
        kw = dict(step.get("kw") or {})
        headers = dict(step.get("headers") or {})
        mode = step["mode"]
        if mode == "file":
            kw["outfile"] = step["outfile"]
            if step.get("recipe") and exists(step["outfile"] + ".part"):  # the documented resume recipe
                headers["Range"] = "bytes=%d-" % DownloadManager.get_resume_position(step["outfile"])
        elif mode == "stream":
            stop_at = step.get("chunk_raise")
            asynchronous = step.get("async_cb")

            def chunk(data):
                if stop_at is not None and len(chunks) >= stop_at:
                    raise AppStop("chunk %d" % len(chunks))
                chunks.append(data)
                if asynchronous:
                    return asyncio.sleep(0)

            kw["chunk_callback"] = chunk
        if step.get("progress"):
            stop = step.get("progress_raise")
            cancel = step.get("progress_cancel")
            seq = self

            nested = step.get("nested")

            async def progress_async(percent):
                progress.append(percent)
                await asyncio.sleep(0)
                if nested and len(progress) == 1:  # a download awaited inside another's callback (past the cap)
                    seq.tm_downloads += 1
                    try:
                        data = await DownloadManager.download_url(nested[0])
                    finally:
                        seq.tm_downloads -= 1
                    seq.failures += data is None
                    if data is not None and sha256(data) != nested[1]:
                        seq.wrong("step %d: its nested download had the wrong bytes" % step["id"])
                if stop is not None and percent >= stop:
                    raise AppStop("at %d%%" % percent)

            def progress_plain(percent):
                progress.append(percent)
                if stop is not None and percent >= stop:
                    raise AppStop("at %d%%" % percent)
                if cancel is not None and percent >= cancel and step["id"] in seq.flight:
                    seq.cancel_soon(step["id"])  # (its own task can't cancel itself: a UI's cancel, a turn later)

            kw["progress_callback"] = progress_async if step.get("async_cb") and cancel is None else progress_plain
        if headers:
            kw["headers"] = headers
        return kw, headers.get("Range")

    def called(self, url):
        self.calls[url] = self.calls.get(url, 0) + 1

    def cancel_soon(self, i):
        # a segment's callback runs in a task of its own and may cancel the download's task at once; the others, a turn
        # later (a task can't cancel itself)
        entry = self.flight.get(i)
        if entry is not None and entry[0] is not asyncio.current_task() and not entry[0].done():
            self.cancelled.add(i)
            entry[0].cancel()
            return

        async def later():
            entry = self.flight.get(i)
            if entry is not None and not entry[0].done():
                self.cancelled.add(i)
                entry[0].cancel()

        asyncio.create_task(later())

    async def download(self, step):
        i = step["id"]
        mode = step["mode"]
        out = step.get("outfile")
        if mode == "file":
            began = self.starts[out] = self.starts.get(out, 0) + 1
            for j, (task, other) in self.flight.items():
                if j != i and other.get("outfile") and not task.done() and _same_file(out, other["outfile"]):
                    self.shared.add(i)  # either may claim the file first (wait_for's task starts a turn later)
                    self.shared.add(j)
            if step["kw"].get("segments"):
                self.segmented_files.add(out)
        chunks = []
        progress = []
        kw, asked = self.arguments(step, chunks, progress)
        self.called(step["url"])
        if step.get("nested"):
            self.called(step["nested"][0])
        outcome = None
        try:
            if step.get("wait_for") is not None:  # the documentation's pattern for a timeout
                got = await TaskManager.wait_for(DownloadManager.download_url(step["url"], **kw), step["wait_for"])
            else:
                got = await DownloadManager.download_url(step["url"], **kw)
            outcome = "returned"
        except asyncio.CancelledError:
            got = outcome = "cancelled"
        except asyncio.TimeoutError:
            got = outcome = "timed out"
        except AppStop as e:
            got, outcome = e, "app"
        except DownloadManager.DownloadError as e:
            got, outcome = e, "error"
        except Exception as e:
            got, outcome = e, "raised"
        finally:
            if self.flight.get(i, (None,))[0] is asyncio.current_task():
                del self.flight[i]
        # what came, checked before anything else runs (no await from here on)
        file_sha = sha256_file(out) if mode == "file" else None
        if mode == "file" and step.get("wait_for") is not None and self.starts[out] != began:
            # (its download ran in a task of wait_for's: another download of the file may have begun and ended since)
            if outcome == "returned" and got is True:
                self.allowed.setdefault(out, set()).update(self.wanted(step, asked))
            file_sha = None if got is True else file_sha
        if mode == "file" and outcome == "returned" and got is True:
            self.allowed.setdefault(out, set()).add(file_sha)
        if mode == "file" and step.get("wait_for") is not None and outcome == "cancelled":
            # (its download runs in a task of wait_for's: it may have finished in the turn the cancel came)
            self.allowed.setdefault(out, set()).update(self.wanted(step, asked))
        if outcome in ("cancelled", "timed out"):
            self.stops += 1
        self.judge(step, outcome, got, chunks, progress, asked, file_sha)
        if outcome == "cancelled":
            raise asyncio.CancelledError

    def wanted(self, step, asked):
        # -> the sha256s a success may have: the resource, or the range asked
        data = self.resource(step)
        shas = set()
        first, last = _parse_range(asked)
        if asked is None:
            shas.add(sha256(data))
        else:
            shas.add(sha256(data[first: None if last is None else last + 1]))
            if step["mode"] == "file" and last is None:  # a resume of a .part: the whole; another's: the whole too
                shas.add(sha256(data))
        return shas

    def judge(self, step, outcome, got, chunks, progress, asked, file_sha):
        i = step["id"]
        mode = step["mode"]
        kw = step["kw"]
        said = "step %d (%s %s%s)" % (i, mode, step["url"].split("/", 3)[-1], " " + asked if asked else "")
        excused = i in self.cancelled or i in self.closed_during or i in self.shared
        if outcome in ("app", "error", "raised") or outcome == "returned" and got in (None, False):
            self.failures += 1
        if outcome == "returned":
            ok = got is not None and got is not False
            if mode == "memory" and got is not None and not isinstance(got, bytes):
                self.wrong("%s: memory mode returned %r" % (said, type(got)))
                return
            if mode != "memory" and got not in (True, False):
                self.wrong("%s: returned %r, not True/False" % (said, got))
                return
            self.note("%s -> %s" % (said, "ok" if ok else "failed"))
            if ok:
                if mode == "memory":
                    have = sha256(got)
                elif mode == "stream":
                    have = sha256(b"".join(chunks))
                else:
                    have = file_sha
                if have is not None and have not in self.wanted(step, asked):
                    self.wrong("%s: succeeded with the wrong bytes (%s)" % (said, have))
                if step.get("must_fail"):
                    self.wrong("%s: succeeded but must fail (%s)" % (said, step["must_fail"]))
                if mode == "file" and not self.shared_since(step) and step["outfile"] in self.plan["outfiles"]:
                    for left in (".part", ".part.state"):
                        if exists(step["outfile"] + left):
                            self.wrong("%s: succeeded and left its %s" % (said, left))
                if step.get("progress") and not step.get("progress_raise"):
                    if not progress or progress[-1] != 100 or progress.count(100) != 1:
                        self.wrong("%s: succeeded, progress %r does not end with one 100" % (said, progress[-5:]))
            elif step.get("expect_ok") and not excused:
                self.wrong("%s: failed, though nothing should stop it" % said)
        elif outcome == "cancelled":
            self.note("%s -> cancelled" % said)
            if i not in self.cancelled:
                self.wrong("%s: CancelledError, but no one cancelled it" % said)
        elif outcome == "timed out":
            self.note("%s -> timed out" % said)
            if step.get("wait_for") is None:
                self.wrong("%s: TimeoutError without wait_for" % said)
        elif outcome == "app":
            self.note("%s -> its callback stopped it" % said)
            if not (step.get("chunk_raise") is not None or step.get("progress_raise") is not None):
                self.wrong("%s: AppStop from nowhere" % said)
        elif outcome == "error":
            self.note("%s -> %s: %s" % (said, type(got).__name__, got))
            if not kw.get("raise_errors"):
                self.wrong("%s: raised %r without raise_errors" % (said, got))
            if step.get("expect_ok") and not excused:
                self.wrong("%s: failed (%r), though nothing should stop it" % (said, got))
        else:
            self.wrong("%s: raised %s: %s" % (said, type(got).__name__, got))
        if progress:
            if any(not isinstance(p, int) or not 0 <= p <= 100 for p in progress):
                self.wrong("%s: progress not ints 0..100: %r" % (said, progress))
            elif any(a >= b for a, b in zip(progress, progress[1:])):
                self.wrong("%s: progress not strictly increasing: %r" % (said, progress))
        if mode == "file" and step["outfile"] not in self.plan["outfiles"]:
            return  # (another outfile's .part: its file is that one's, judged at the end)
        if mode == "file" and not (outcome == "returned" and got is True) and not self.shared_since(step):
            if size(step["outfile"] + ".part") == 0:
                self.wrong("%s: failed and left an empty .part" % said)
        if mode == "file" and not (outcome == "returned" and got is True):
            if file_sha != self.old_sha(step["outfile"]) and file_sha not in self.allowed.get(step["outfile"], ()):
                if not self.shared_since(step):
                    self.wrong("%s: failed and its outfile is neither the old one nor another's success" % said)

    def shared_since(self, step):
        # whether another download of the same outfile ran beside this one (its success may be the file now)
        for task, other in self.flight.values():
            if other.get("outfile") and _same_file(step["outfile"], other["outfile"]):
                return True
        return step["id"] in self.shared

    def old_sha(self, out):
        data = self.old.get(out)
        return sha256(data) if data is not None else None

    async def cancel(self, step):
        for _ in range(step["turns"]):
            await asyncio.sleep(0)
        live = [(i, entry) for i, entry in sorted(self.flight.items()) if not entry[0].done()]
        if not live:
            return
        i, (task, other) = live[step["pick"] % len(live)]
        if task is asyncio.current_task():  # (an actor's own awaited download: no task can cancel itself)
            return
        self.cancelled.add(i)
        task.cancel()
        self.note("cancel step %d" % i)

    async def post(self, step):
        self.called(step["url"])
        body = await DownloadManager.post_url(step["url"], data=step["data"])
        if body is not None:
            import json

            sent = json.loads(body)
            if sent.get("body_len") != len(step["data"]):
                self.wrong("post: the server got %r" % (sent,))
        self.failures += body is None
        self.note("post -> %s" % ("body" if body is not None else "None"))

    def check_listing(self):
        listing = DownloadManager.downloads()
        if not isinstance(listing, list):
            self.wrong("downloads() returned %r" % (listing,))
            return
        live = sum(1 for task, step in self.flight.values() if not task.done()) + self.tm_downloads
        if len(listing) > live:
            self.wrong("downloads() lists %d, %d are running" % (len(listing), live))
        for d in listing:
            if sorted(d) != ["done", "speed", "state", "total", "url"]:
                self.wrong("downloads() entry %r" % (d,))
            elif d["state"] not in ("queued", "connecting", "downloading", "done", "failed"):
                self.wrong("downloads() state %r" % (d,))

    tm_downloads = 0

    async def task_manager(self, step):
        # A task of TaskManager's, perhaps a download, perhaps cancelled after some turns
        async def work():
            if step.get("url"):
                self.tm_downloads += 1
                try:
                    data = await DownloadManager.download_url(step["url"])
                finally:
                    self.tm_downloads -= 1
                self.failures += data is None
                if data is not None and sha256(data) != step["sha"]:
                    self.wrong("TaskManager download: wrong bytes")
            else:
                for _ in range(step["turns"]):
                    await asyncio.sleep(0)

        if step.get("url"):
            self.called(step["url"])
        task = TaskManager.create_task(work())
        if step.get("cancel") is not None:
            for _ in range(step["cancel"]):
                await asyncio.sleep(0)
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def http(self, step):
        import aiohttp

        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(step["url"], timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    data = await resp.read()
                    if resp.status == 200 and sha256(data) != step["sha"]:
                        self.wrong("aiohttp get %s: wrong bytes" % step["url"])
        except aiohttp.ClientError as e:
            self.note("aiohttp get -> %s" % type(e).__name__)

    async def websocket(self, step):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(step["url"]) as ws:
                await ws.send_str("hello %d" % step["n"])
                msg = await ws.receive(timeout=5)
                if msg.data != "hello %d" % step["n"]:
                    self.wrong("websocket echo: %r" % (msg.data,))

    async def held_websocket(self, step, held):
        # opened on the first step, then one message echoed per step, while downloads come and go around it
        import aiohttp

        if held[0] is None:
            held[1] = aiohttp.ClientSession()
            held[0] = await held[1].ws_connect(step["url"])
        await held[0].send_str("held %d" % step["n"])
        msg = await held[0].receive(timeout=5)
        if msg.data != "held %d" % step["n"]:
            self.wrong("held websocket echo: %r (close code %r)" % (msg.data, held[0].close_code))

    # -- the end ---------------------------------------------------------------------------------------------------

    def check_files(self):
        for out in self.plan["outfiles"]:
            have = sha256_file(out)
            if have != self.old_sha(out) and have not in self.allowed.get(out, ()):
                self.wrong("%s ends as neither its old bytes nor a download's success (%s)" % (out, have))
            part = out + ".part"
            if exists(part) and size(part) == 0:
                self.wrong("%s is empty" % part)
            if exists(part + ".state") and not exists(part):
                self.wrong("%s.state is left without its .part" % part)
            if exists(part) and out not in self.segmented_files:
                with open(part, "rb") as f:
                    data = f.read()
                record = _record(part + ".state")
                frm = (record or {}).get("from") or 0
                if not any(t[frm: frm + len(data)] == data for t in self.truth.values()):
                    self.wrong("%s (%d bytes, from %d) is no piece of any resource" % (part, len(data), frm))

    async def finish(self, base, idle_ms):
        # after everything ended: no listing, no slot, the session closes by itself once idle, nothing left behind
        if DownloadManager.downloads():
            self.wrong("downloads() lists %r after the end" % (DownloadManager.downloads(),))
        self.problems += ["after the end: " + held for held in admission_is_free()]
        await asyncio.sleep_ms(idle_ms + 50)
        for _ in range(3):
            await asyncio.sleep(0)
        if DownloadManager.is_session_active():
            self.wrong("the session is still active %d ms after the last download" % (idle_ms + 50))
        from stepcancel import loop_is_idle

        self.problems += ["after the end: " + left for left in loop_is_idle()]
        left = [t for t in TaskManager.task_list if not t.done()]
        if left:
            self.wrong("TaskManager holds %d live tasks" % len(left))
        from mpos.net import admission
        from mpos.net import download_manager

        if getattr(admission._lock, "locked", lambda: False)():
            self.wrong("admission's lock is held")
        if getattr(download_manager._running_lock, "locked", lambda: False)():
            self.wrong("download_manager's running lock is held")
        from aiohttp import loading

        if getattr(getattr(loading, "_lock", None), "locked", lambda: False)():
            self.wrong("aiohttp's loading lock is held")
        if fd_count() != base:
            self.wrong("%d fds left" % (fd_count() - base))
        self.check_files()


def _same_file(a, b):
    # whether two outfiles share a file: the same, or one is the other's .part or .part.state
    return a == b or a.startswith(b + ".part") or b.startswith(a + ".part")


def _parse_range(value):
    if value is None:
        return None, None
    first, _, last = value[6:].partition("-")
    return int(first), (int(last) if last else None)


def _record(path):
    import json

    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


async def _main(plan, seq):
    DownloadManager.retry_base_ms = 5  # the waits between tries are another test's subject
    DownloadManager.retry_max_ms = 50
    DownloadManager.session_idle_ms = plan["idle_ms"]
    DownloadManager.max_connections = 3
    for out, data in plan["outfiles"].items():
        for path in (out, out + ".part", out + ".part.state"):
            if exists(path):
                os.remove(path)
        if data is not None:
            with open(out, "wb") as f:
                f.write(data)
        seq.old[out] = data
    for name in plan["resources"]:
        seq.resource({"res": name})
    base = fd_count()

    async def watchdog():
        await asyncio.sleep(plan["hang_s"])
        listing = DownloadManager.downloads()
        raise SystemExit("hung: in flight %r, listed %r" % (sorted(seq.flight), listing))

    dog = asyncio.create_task(watchdog())
    await asyncio.gather(*[seq.actor("actor%d" % n, steps) for n, steps in enumerate(plan["actors"])])
    dog.cancel()
    await asyncio.sleep(0)
    idle = max([plan["idle_ms"]] + [s["value"] for steps in plan["actors"] for s in steps
                                     if s["op"] == "tune" and s["name"] == "session_idle_ms"])
    await seq.finish(base, idle)


def run(plan):
    seq = Sequence(plan)
    try:
        asyncio.run(_main(plan, seq))
    except SystemExit as e:
        seq.wrong(str(e))
    return seq
