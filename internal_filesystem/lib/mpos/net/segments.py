# Segmented downloads: download_url(url, outfile=..., segments=N) fetches byte ranges of one resource over up to
# N connections at once, each written into its place in OUTFILE.part. download_manager imports this module only
# when segments > 1: on the device every module costs heap.
#
# - A probe first: a GET with "Range: bytes=0-0", not a HEAD. It asks what the segments will ask (a ranged GET,
#   same redirects), its 206 Content-Range gives the total size, its ETag and Content-Encoding are those of the
#   GET, and on keep-alive its connection then serves a segment: one round trip, no extra handshake. Anything but
#   a clean 206 with a size (200, 416, a content coding, an error) -> one plain stream: the existing engine
#   (_Job.run on this same object), which also retries or reports a real failure the usual way.
# - Each segment is a _Job (retries, Range resume inside its range, timeouts, deadline) whose "file" is a _Place:
#   its offset in the one shared .part handle. One handle, not one per segment: littlefs and FAT cache a file per
#   handle, and two handles writing one file lose each other's data.
# - OUTFILE.part.state (tiny JSON) lists what is still missing; all else is on disk. It is rewritten at most every
#   save_ms and when the download stops, always after flushing the data it vouches for, so a later call (even
#   after a reboot) fetches only the missing bytes. It is trusted only for the same URL, size and validator (ETag
#   or Last-Modified) and a .part long enough; otherwise the download starts afresh. A resource changing while
#   segments run (If-Range answered with a 200, another size or validator) -> one plain stream from scratch.
# - Connections: the download is admitted like any other (one slot, by priority), then takes only slots that are
#   free right now, up to N in all, and splits the missing bytes over the connections it got. So it never passes
#   max_connections nor makes queued downloads wait longer; for N segments allow N connections.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

from . import download_manager as dm
from .download_manager import _Job, _remove, _size, read_record, url_key, write_record

min_segment = 16384  # bytes: a smaller piece is not worth a request (and a TLS handshake) of its own
save_ms = 1000  # state file rewrites while data comes in, at most this often (flash wear vs. bytes refetched)


class _Odd(Exception):
    # The server stopped answering as the probe said: go plain.
    pass


class _Place:
    # A segment's "file": writes land at its offset in the shared .part. pos moves only after a write returned, so
    # the state file never claims bytes that are not on disk. No allocation here: this is the per-chunk path.
    def __init__(self, m, a, b):
        self.m = m
        self.pos = a
        self.end = b

    def write(self, data):
        m = self.m
        if m.cur != self.pos:  # another segment wrote last (a run of one segment's chunks needs no seek)
            m.f.seek(self.pos)
        m.cur = -1  # unknown, should the write fail
        m.f.write(data)
        self.pos += len(data)
        m.cur = self.pos


class _Seg(_Job):
    # Bytes [a, b] of the resource, fetched by the existing engine into their place.
    def __init__(self, m, a, b):
        h = dict(m.headers)
        h["Range"] = "bytes=%d-%d" % (a, b)
        if m.validator:
            h["If-Range"] = m.validator  # from the first request on: a changed resource answers 200, never mixes
        # total_size: the engine calls m._tick once per percent of this range (its cap of 99 never reached before
        # the end), so N segments give the caller every percent of the file (~250 bytes of garbage per call).
        _Job.__init__(self, m.url, m.outfile, None, b - a + 2, h, {
            "timeout": m.timeout, "tries": m.tries, "deadline": m._left(), "chunk_size": m.chunk,
            "progress_callback": m._tick, "speed_callback": m._tick})
        self.f = self.w = _Place(m, a, b)
        self.m = m

    def _open_file(self):
        pass  # the shared .part is open already

    def _note_part(self):
        pass  # the download's record is the Segmented's to write

    def _restart(self):
        raise _Odd()  # other bytes than the range asked for (see _Job.run): the server changed its mind

    async def _report(self):
        # The download's bookkeeping, called directly: what it raises (_Odd, a record that can't be written) is
        # the download's own, not an app callback's
        self.pct = self._pct()
        self.speed_t = ticks_ms()
        r = self.m._tick()
        if r is not None:
            await r

    async def _finish(self):
        self.state = "done"
        return True


def _split(todo, k):
    # k connections over the missing ranges: the range with the largest pieces gets one piece more, while pieces
    # stay >= min_segment; then each range is cut evenly. -> [[a, b], ...] in file order.
    cnt = [1] * len(todo)
    for _ in range(k - len(todo)):
        best, top = -1, 0
        for i, (a, b) in enumerate(todo):
            n = b - a + 1
            if n // (cnt[i] + 1) >= max(min_segment, 1) and n // cnt[i] > top:
                best, top = i, n // cnt[i]
        if best < 0:
            break
        cnt[best] += 1
    out = []
    for i, (a, b) in enumerate(todo):
        n, c = b - a + 1, cnt[i]
        for j in range(c):
            out.append([a + n * j // c, a + n * (j + 1) // c - 1])
    return out


class Segmented(_Job):
    # The download as the caller and downloads() see it: its admission slot, callbacks, sha256 and the .part.

    def __init__(self, url, outfile, chunk_callback, total_size, headers, opts):
        _Job.__init__(self, url, outfile, chunk_callback, total_size, headers, opts)
        self.nseg = opts["segments"]
        self.end = None
        self.run_segs = []  # segments in flight (a failed one stays: the final state save needs its progress)
        self.todo = []  # ranges no segment has taken yet
        self.extra = 0  # admission slots taken beyond our own, not yet given back
        self.got = 0  # bytes of the segments that are finished

    def _left(self):
        # seconds left of deadline= (None: no deadline)
        return None if self.end is None else max(ticks_diff(self.end, ticks_ms()), 1) / 1000

    segmented = True  # _Job.run calls _segments first, once admitted

    async def _segments(self, sess):
        # -> True when the download was done over ranged connections; otherwise _Job.run goes on with one plain
        # stream from scratch.
        if self.deadline is not None:
            self.end = ticks_add(ticks_ms(), int(self.deadline * 1000))
        # A caller's Range asks for part of the resource: that is the plain engine's job.
        if not self.lo and self.hi is None and not any(k.lower() == "range" for k in self.headers):
            got = await self._probe(sess)
            if got is not None and await self._segmented(sess, got[0], got[1]):
                return True
        # The plain stream truncates the .part: first drop the record that described it.
        _remove(self.outfile + ".part.state")
        self.deadline = self._left()
        return False

    async def _probe(self, sess):
        # -> (size, validator) when the server serves ranges of this resource as it is; None otherwise.
        # With a segmented partial on disk, a failed probe (Wi-Fi not up yet after a reboot, a 503) must not send
        # the download down the plain path, which would truncate the .part: try again, then fail and keep it.
        keep = _size(self.outfile + ".part.state") >= 0
        fails = 0
        while True:
            try:
                return await self._ask(sess)
            except Exception as e:
                err = dm._classify(e, self.timeout)
                if not keep:
                    return None  # nothing to lose: the plain engine retries it or fails it and says why
                if err is None:
                    raise
                fails += 1
                if not err.retry or fails >= self.tries:
                    raise err
                await asyncio.sleep_ms(250 << fails)

    async def _ask(self, sess):
        import aiohttp

        h = self._request_headers()
        h["Range"] = "bytes=0-0"
        self.state = "connecting"
        tmo = aiohttp.ClientTimeout(total=self._left(), connect=self.timeout, sock_read=self.timeout)
        async with sess.get(self.url, headers=h, timeout=tmo, ssl=dm._context()) as r:
            hd = r.headers
            if r.status >= 400:  # a failure, not an answer about ranges
                raise dm.HTTPError("HTTP %d" % r.status, r.status, retry=r.status in dm._TRANSIENT)
            cr = dm._content_range(hd.get("Content-Range"))
            if r.status != 206 or cr is None or cr[0] or not cr[2]:
                return None
            if hd.get("Content-Encoding", "identity").lower() != "identity":
                return None  # ranges of coded bytes do not make the file
            v = hd.get("ETag") or hd.get("Last-Modified")  # the engine's If-Range choice
            if v and v.startswith("W/"):
                return None  # a weak ETag: If-Range must then answer 200, every segment would start over
            await r.read()  # the one byte, so the connection can serve a segment
            return cr[2], v

    def _load(self, part):
        # The missing ranges an earlier try recorded, if it was about this very resource; else None.
        try:
            s = read_record(part)
            todo = s["todo"]
            if s["url"] != url_key(self.url) or s["size"] != self.size or not self.validator or s["v"] != self.validator:
                return None
            prev = -1
            for a, b in todo:
                if not (isinstance(a, int) and isinstance(b, int) and prev < a <= b < self.size):
                    return None
                prev = b
            top = self.size - 1  # the last byte the record calls done must lie inside the .part
            for a, b in reversed(todo):
                if b != top:
                    break
                top = a - 1
            n = _size(part)
            return todo if n >= 0 and n > top else None
        except Exception:  # missing, unreadable or corrupt: start afresh
            return None

    def _save(self):
        # The data first, then the record that vouches for it
        part = self.outfile + ".part"
        try:
            self.f.flush()
        except OSError as e:
            raise dm.LocalFileError("cannot write %s: %s" % (part, e))
        todo = [[s.w.pos, s.w.end] for s in self.run_segs if s.w.pos <= s.w.end] + self.todo
        todo.sort()  # _load wants them in file order (requeued and restarted ranges come in any order)
        write_record(part, {"url": url_key(self.url), "size": self.size, "v": self.validator, "todo": todo})

    def _same(self, s):
        # Did segment s get bytes of the resource the probe saw? (no: start over with one plain stream)
        if s.coded or (s.size is not None and s.size != self.size) or (
                s.validator and self.validator and s.validator != self.validator):
            raise _Odd()

    def _tick(self):
        # Each segment's engine calls this when its percent moves or a second passed: the sum goes to the caller's
        # callbacks (monotonic: _report only passes a higher percent), and now and then to the state file. Not
        # async: a coroutine is made only when a caller's callback is due (the engine awaits what this returns).
        d = self.got
        for s in self.run_segs:
            d += s.done
        self.done = d
        now = ticks_ms()
        if ticks_diff(now, self.saved) >= save_ms:
            self.saved = now
            for s in self.run_segs:
                self._same(s)
            self._save()
        if self._due():
            return self._report()

    async def _segmented(self, sess, size, v):
        # -> True when done; False to go plain; raises on failure (the .part and its state stay for a resume).
        if self.max_size is not None and size > self.max_size:
            raise dm.DownloadError("body of %d bytes exceeds max_size=%d" % (size, self.max_size))
        part = self.outfile + ".part"
        sf = part + ".state"
        self.size, self.validator = size, v
        todo = self._load(part)
        fresh = todo is None
        k = 1 if dm._queue else 1 + max(0, min(self.nseg - 1, dm.DownloadManager.max_connections - dm._active))
        plan = _split([[0, size - 1]] if fresh else todo, k)
        if fresh and len(plan) < 2:
            return False  # too small to split, or no connection free: one plain stream is cheaper
        try:
            if fresh:
                _remove(sf)  # before the truncation: a stale record must never vouch for the new file
            self.f = open(part, "wb" if fresh else "r+b")
        except OSError as e:
            raise dm.LocalFileError("cannot write %s: %s" % (part, e))
        workers = min(k, len(plan))
        self.extra = max(workers - 1, 0)
        dm._active += self.extra  # taken at once: nothing was awaited since the check
        self.cur = -1
        self.todo = plan
        self.have = size - sum(b - a + 1 for a, b in plan)
        self.done = self.got = 0
        self.saved = self.speed_t = ticks_ms()
        self.speed_n = 0
        self.state = "downloading"
        self.err = None
        self.live = workers
        self.ev = asyncio.Event()
        tasks = [asyncio.create_task(self._work(sess, i > 0)) for i in range(workers)]
        ok = False
        try:
            while self.live and self.err is None:
                await self.ev.wait()
                self.ev.clear()
            ok = self.err is None
        finally:
            # On failure or cancellation: stop every segment (each closes its connection), give the slots back,
            # record the progress. A task cancelled before it ran skips its own cleanup, hence all of it here.
            for t in tasks:
                t.cancel()
            for t in tasks:
                try:
                    await t
                except BaseException:
                    pass
            while self.extra:
                self.extra -= 1
                dm._leave()
            self.done = self.got + sum(s.done for s in self.run_segs)
            if not ok and not isinstance(self.err, _Odd) and self.have + self.done:
                try:
                    self._save()
                except dm.DownloadError:
                    pass  # the failure (or cancellation) under way is the one to report
        if self.err is not None:
            if not isinstance(self.err, _Odd):
                raise self.err
            self.f.close()
            self.f = None
            self.have = self.done = 0
            self.size = self.validator = None
            return False
        # Every range is in. sha256= is checked by one read pass over the assembled file (the segments arrive out
        # of order, so there is no streaming hash); then the engine's own finish renames .part over OUTFILE.
        self.done = size - self.have
        if self.sha:
            import hashlib

            self.f.flush()
            self.hash = hashlib.sha256()
            self._hash_file(part)
        try:
            return await _Job._finish(self)
        finally:
            if _size(part) < 0:  # renamed (or removed after a sha256 mismatch): the record has nothing to describe
                _remove(sf)

    async def _work(self, sess, own):
        # One connection: takes ranges until none are left.
        try:
            while self.err is None and self.todo:
                a, b = self.todo.pop(0)
                s = _Seg(self, a, b)
                self.run_segs.append(s)
                try:
                    await s.run(sess)
                except dm.HTTPError as e:
                    if e.status == 416:  # the resource shrank since the probe
                        raise _Odd()
                    raise
                self._same(s)
                self.run_segs.remove(s)
                self.got += s.done
                p = s.w.pos
                if p <= b:  # a 206 shorter than asked: the rest is another range (nothing at all: odd)
                    if p == a:
                        raise _Odd()
                    self.todo.insert(0, [p, b])
            if own:
                self.extra -= 1
                dm._leave()  # this connection is done: its slot goes to whoever waits
        except Exception as e:
            if self.err is None:
                self.err = e
        finally:
            self.live -= 1
            self.ev.set()
