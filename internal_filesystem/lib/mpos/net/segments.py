# Segmented downloads: download_url(url, outfile=..., segments=N) fetches byte ranges of one resource over up to N
# connections at once, each written into its place in OUTFILE.part. Imported only when segments > 1.
#
# - A probe first, a GET of "bytes=0-0" (what the segments will ask, redirects included, and on keep-alive its
#   connection then serves one): only a clean 206 with a size makes segments; anything else is one plain stream,
#   Download's run loop on this same object.
# - One .part handle for all segments: littlefs and FAT cache a file per handle, and two handles writing one file
#   lose each other's data.
# - The record (see partfile.py) lists the ranges still missing, is written first with all of them (before a byte)
#   and then only after the data it vouches for is flushed, and is trusted only for the same URL, size and validator
#   and a .part long enough. A resource that changes under the segments -> one plain stream from scratch.
# - Besides its own slot the download takes only slots free right now: it never passes max_connections nor makes a
#   queued download wait longer.
import asyncio
from time import ticks_diff, ticks_ms

from . import admission, partfile
from .download import CONNECTING, DOWNLOADING, Download, http_error, parse_content_range, with_user_agent
from .errors import DownloadError, HTTPError, OutOfMemory

min_segment = 16384  # bytes: a smaller piece is not worth a request (and a TLS handshake) of its own
save_ms = 1000  # record rewrites while data comes in, at most this often (flash wear vs. bytes fetched again)


class _GoPlain(Exception):
    # The server no longer answers as the probe said: one plain stream instead
    pass


class _RangeWriter:
    # A segment's file: writes land at its offset in the shared .part. `position` moves only once a write returned,
    # so the record never claims bytes that are not on disk. It runs per chunk: no allocation.
    def __init__(self, download, first, last):
        self.download = download
        self.position = first
        self.last = last  # the range's last byte

    def write(self, data):
        download = self.download
        if download.file_position != self.position:  # another segment wrote last (a run of one's chunks: no seek)
            download.file.seek(self.position)
        download.file_position = -1  # unknown, should the write fail
        download.file.write(data)
        self.position += len(data)
        download.file_position = self.position


class _Segment(Download):
    # Bytes [first, last] of the resource, fetched by Download's run loop into their place. Its download holds the
    # session, the connection slot and the listing, and reports progress.
    def __init__(self, download, first, last, sess):
        headers = dict(download.headers)
        headers["Range"] = "bytes=%d-%d" % (first, last)
        if download.validator:
            headers["If-Range"] = download.validator  # from the first request on: a changed resource answers 200
        # total_size: run calls the download's _on_progress once per percent of this range (its cap of 99 never
        # reached before the end), so N segments give the caller every percent of the file
        Download.__init__(self, download.url, download.outfile, None, last - first + 2, headers, {
            "timeout": download.timeout, "tries": download.tries, "chunk_size": download.chunk_size,
            "progress_callback": download._on_progress, "speed_callback": download._on_progress})
        if download.deadline_ticks is not None:
            self.deadline_ticks = download.deadline_ticks
        self.file = self.writer = _RangeWriter(download, first, last)
        self.download = download
        self.client_session = sess

    def _enter(self):
        return self.client_session

    async def _admit(self, sess):
        return sess  # (the download's slot and session)

    def _exit(self, admitted):
        pass

    def _failed(self, e, memory=False):
        raise OutOfMemory("out of memory") if memory else e  # (memory: e may have been retyped since, Download._failed)

    def _open_file(self):
        pass  # the shared .part is open already

    def _record_part(self):
        pass  # the record is the download's to write

    def _retry_wait(self, e, fails, end, at_sink):
        # Every segment's retries count towards the one download's max_reconnects
        self.reconnects = self.download.reconnects
        try:
            return Download._retry_wait(self, e, fails, end, at_sink)
        finally:
            self.download.reconnects = self.reconnects

    def _restart(self):
        raise _GoPlain()  # other bytes than the range asked for (see Download._accept): the server changed course

    async def _report(self):
        # The download's bookkeeping, called directly: what it raises (_GoPlain, a record that can't be written) is
        # the download's own, not an app callback's
        self.percent_said = self._percent_now()
        self.speed_since = ticks_ms()
        pending = self.download._on_progress()
        if pending is not None:
            await pending

    async def _finish(self):
        return True  # the download's own finish comes once every range is in


def _split(missing, connections):
    # `connections` over the missing ranges: the range with the largest pieces gets one piece more, while pieces
    # stay >= min_segment; then each range is cut evenly. -> [[first, last], ...] in file order.
    pieces = [1] * len(missing)
    for _ in range(connections - len(missing)):
        best, largest = -1, 0
        for i, (first, last) in enumerate(missing):
            n = last - first + 1
            if n // (pieces[i] + 1) >= max(min_segment, 1) and n // pieces[i] > largest:
                best, largest = i, n // pieces[i]
        if best < 0:
            break
        pieces[best] += 1
    plan = []
    for i, (first, last) in enumerate(missing):
        n, count = last - first + 1, pieces[i]
        for j in range(count):
            plan.append([first + n * j // count, first + n * (j + 1) // count - 1])
    return plan


class Segmented(Download):
    # The download as the caller and downloads() see it: its connection slot, callbacks, sha256 and the .part.
    segmented = True  # run calls _segments first, once admitted
    file_position = -1  # where the shared .part's handle stands; -1: unknown
    failure = None  # what ended a segment: the download's failure (a _GoPlain: go plain; the class MemoryError)

    def __init__(self, url, outfile, chunk_callback, total_size, headers, options):
        Download.__init__(self, url, outfile, chunk_callback, total_size, headers, options)
        self.segment_count = options["segments"]
        self.in_flight = []  # segments running (a failed one stays: the last record save needs its progress)
        self.unassigned = []  # ranges no segment has taken yet
        self.extra_slots = 0  # connection slots taken besides the download's own, not yet given back
        self.finished_bytes = 0  # bytes of the segments that are done

    async def _segments(self, sess):
        # -> True when the download was done over ranged connections; else run goes on with one plain stream from
        # scratch
        # A caller's Range (parsed into range_start and range_end) asks for part of the resource, or resumes a .part
        # as far as its record vouches for it: the run loop's job
        if not self.range_start and self.range_end is None:
            probed = await self._probe(sess)
            if probed is not None and await self._run_segments(sess, probed[0], probed[1]):
                return True
            # The plain stream truncates the .part: first the record that described it goes
            partfile.remove(self.outfile + ".part.state")
        return False

    async def _probe(self, sess):
        # -> (size, validator) when the server serves ranges of this resource as it is; None otherwise. With a
        # segmented partial on disk, a failed probe (Wi-Fi not up yet after a reboot, a 503) must not send the
        # download down the plain path, which would truncate the .part: try again, then fail and keep it.
        keep = partfile.size_of(self.outfile + ".part.state") >= 0
        fails = 0
        while True:
            try:
                return await self._probe_once(sess)
            except Exception as e:
                if not keep:
                    return None  # nothing to lose: the plain run loop retries it or fails it and says why
                fails += 1
                await self._retry_wait(e, fails, self.deadline_ticks, False)  # or raises: no more tries

    async def _probe_once(self, sess):
        import aiohttp

        self.state = CONNECTING
        if sess.closed:  # close_session() ended the wait before this try: the download fails, as run's requests do
            from .errors import NetworkError

            raise NetworkError("the session was closed (close_session) during the download", retry=False)
        headers = with_user_agent(dict(self.headers), self.tunables.user_agent)
        headers["Range"] = "bytes=0-0"
        end = self.deadline_ticks
        total = None if end is None else max(ticks_diff(end, ticks_ms()), 1) / 1000  # (what deadline= leaves)
        timeout = aiohttp.ClientTimeout(total=total, connect=self.timeout, sock_read=self.timeout)
        async with sess.get(self.url, headers=headers, timeout=timeout,
                            ssl=admission.tls_context(self.tunables.ca)) as resp:
            if resp.status >= 400:  # a failure, not an answer about ranges
                raise http_error(resp)
            got = parse_content_range(resp.headers.get("Content-Range"))
            if resp.status != 206 or got is None or got[0] or got[1] or not got[2]:
                return None  # (more than byte 0: the server ignores where a range ends, and the body is not read)
            from aiohttp.response import content_codings

            if content_codings(resp.headers):
                return None  # ranges of coded bytes do not make the file
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")  # as run's If-Range
            if validator and validator.startswith("W/"):
                return None  # a weak ETag: If-Range must then answer 200, every segment would start over
            await resp.read()  # the one byte, so the connection can serve a segment
            return got[2], validator

    def _recorded_missing(self, part):
        # The missing ranges an earlier try recorded, if it was about this very resource; else None
        try:
            record = partfile.read_record(part)
            missing = record["todo"]
            if (record["url"] != partfile.url_key(self.url) or record["size"] != self.resource_size
                    or not self.validator or record["v"] != self.validator):
                return None
            previous = -1
            for first, last in missing:
                if not (isinstance(first, int) and isinstance(last, int)
                        and previous < first <= last < self.resource_size):
                    return None
                previous = last
            top = self.resource_size - 1  # the last byte the record calls done must lie inside the .part
            for first, last in reversed(missing):
                if last != top:
                    break
                top = first - 1
            n = partfile.size_of(part)
            return missing if n >= 0 and n > top else None
        except MemoryError:
            raise  # (no heap to read the record is no reason to truncate what it vouches for)
        except Exception:  # missing, unreadable or corrupt: start afresh
            return None

    def _save_record(self):
        # The data first, then the record that vouches for it
        part = self.outfile + ".part"
        missing = [[s.writer.position, s.writer.last] for s in self.in_flight if s.writer.position <= s.writer.last]
        missing += self.unassigned
        missing.sort()  # _recorded_missing wants file order (ranges put back and restarted come in any order)
        record = {"url": partfile.url_key(self.url), "size": self.resource_size, "v": self.validator, "todo": missing}
        try:
            self.file.flush()
            partfile.write_record(part, record)
        except OSError as e:
            raise self._file_error("cannot write %s" % part, e)

    def _check_same_resource(self, segment):
        # Did the segment get bytes of the resource the probe saw? (no: one plain stream from scratch)
        size = segment.resource_size
        if (segment.content_coded or size is not None and size != self.resource_size
                or segment.validator and self.validator and segment.validator != self.validator):
            raise _GoPlain()

    def _on_progress(self):
        # Each segment's run loop calls this when its percent moves or a second passed: the sum goes to the caller's
        # callbacks (monotonic: _report only passes a higher percent), and now and then to the record. Not async:
        # a coroutine is made only when a caller's callback is due (the segment awaits what this returns).
        delivered = self.finished_bytes
        for segment in self.in_flight:
            delivered += segment.delivered
        self.delivered = delivered
        now = ticks_ms()
        if ticks_diff(now, self.saved_at) >= save_ms:
            self.saved_at = now
            for segment in self.in_flight:
                self._check_same_resource(segment)
            self._save_record()
        if self._report_due():
            return self._report()
        return None

    async def _run_segments(self, sess, size, validator):
        # -> True when done; False to go plain; raises on failure (the .part and its record stay for a resume)
        if self.max_size is not None and size > self.max_size:
            raise DownloadError("body of %d bytes exceeds max_size=%d" % (size, self.max_size))
        part = self.outfile + ".part"
        self.resource_size, self.validator = size, validator
        missing = self._recorded_missing(part)
        fresh = missing is None
        limit = self.tunables.max_connections
        connections = 1 + min(self.segment_count - 1, admission.free(limit))
        plan = _split([[0, size - 1]] if fresh else missing, connections)
        if fresh and len(plan) < 2:  # too small to split, or no connection free: one plain stream is cheaper
            self.resource_size = self.validator = None  # its record names what its answer says, not the probe
            return False
        try:
            if fresh:
                partfile.remove(part + ".state")  # before the truncation: it must never vouch for the new file
            self.file = open(part, "wb" if fresh else "r+b")
        except OSError as e:
            raise self._file_error("cannot write %s" % part, e)
        self.unassigned = plan
        if fresh:  # recorded all missing before a byte lands: a .part with holes never passes for a plain partial
            self._save_record()  # (get_resume_position's), whatever ends this download before its first save
        workers = min(connections, len(plan))
        tasks = [None] * workers  # each task in its place as it is made, where _stop finds it whatever fails next
        # all free: nothing was awaited since the count (no worker at all: a record that lists no range missing)
        self.extra_slots = admission.take_free(workers - 1, limit)
        succeeded = closing = False  # closing: this coroutine is being closed (GeneratorExit), its cleanup can't await
        try:  # (from the slots on: a full heap may fail any line, and the finally gives them back)
            self.kept = size - sum(last - first + 1 for first, last in plan)
            self.delivered = self.finished_bytes = 0
            self.saved_at = self.speed_since = ticks_ms()
            self.speed_from = 0
            self.state = DOWNLOADING
            self.workers_left = workers
            self.wake = asyncio.Event()
            for i in range(workers):
                tasks[i] = asyncio.create_task(self._worker(sess, i > 0))
            while self.workers_left and self.failure is None:
                await self.wake.wait()
                self.wake.clear()
            if self.failure is None and (self.unassigned or self.in_flight):
                self.failure = MemoryError  # a worker ended with its range undone and no failure: its store ran out
            succeeded = self.failure is None
        except MemoryError:
            self.failure = MemoryError  # (typed before the cancels below, which may retype it: see _worker)
        except GeneratorExit:
            closing = True
            raise
        finally:
            for task in tasks:
                if task is not None:  # (None: not made, the heap ran out first)
                    task.cancel()
            try:
                if closing:  # the segments end in the loop's next turns, on their own: their progress is noted now
                    self._note_progress(succeeded)
                else:
                    await self._stop(tasks, succeeded)
            finally:  # the slots, even when a full heap could not make _stop's coroutine: they are counted, not made
                while self.extra_slots:
                    self.extra_slots -= 1
                    admission.leave(self.tunables.max_connections)
        if self.failure is not None:
            return self._after_failure()
        # Every range is in. sha256= is checked by one read pass over the assembled file (the segments arrive out of
        # order, so there is no streaming hash); then Download's own finish renames .part over OUTFILE.
        self.delivered = size - self.kept
        if self.sha256:
            import hashlib

            self.file.flush()
            self.hasher = hashlib.sha256()
            partfile.each_block(part, self.chunk_size, self.hasher.update)
        return await Download._finish(self)

    async def _stop(self, tasks, succeeded):
        # On failure or cancellation too, once the segments are cancelled: each ended (closing its connection), the
        # progress recorded. A task cancelled before it ran skips its own cleanup, hence all of it here.
        try:
            for task in tasks:
                if task is not None:
                    try:
                        await task
                    except GeneratorExit:  # (closed meanwhile: no more awaits, see _run_segments)
                        raise
                    except BaseException:
                        pass
        finally:
            self._note_progress(succeeded)

    def _note_progress(self, succeeded):
        # What the segments delivered; after a failure, in the record for a resume (their writers' positions count
        # only bytes written: true whether or not their tasks ended yet)
        self.delivered = self.finished_bytes + sum(s.delivered for s in self.in_flight)
        if not succeeded and not isinstance(self.failure, _GoPlain) and self.kept + self.delivered:
            try:
                for segment in self.in_flight:  # bytes of another version are no progress: the last record stays
                    self._check_same_resource(segment)
                self._save_record()
            except (DownloadError, _GoPlain):
                pass  # the failure (or cancellation) under way is the one to report

    def _after_failure(self):
        # -> False to go plain, after a _GoPlain; else raises the segment's failure
        if not isinstance(self.failure, _GoPlain):
            raise self.failure
        self.file.close()
        self.file = None
        self.kept = self.delivered = 0
        self.resource_size = self.validator = None
        return False

    async def _worker(self, sess, own_slot):
        # One connection: takes ranges until none are left
        try:
            while self.failure is None and self.unassigned:
                # A range is in one list or the other at every step a full heap may fail: the record lists both
                first, last = self.unassigned[0]
                segment = _Segment(self, first, last, sess)
                self.in_flight.append(segment)
                self.unassigned.pop(0)
                refused = False
                try:
                    await segment.run()
                except HTTPError as e:
                    if e.status == 416:  # the resource shrank since the probe
                        raise _GoPlain()
                    # A 503 or 429 to one connection of several, after its tries: a server that caps the connections
                    # per client (nginx's limit_conn). The others take its range; the last connection's is a failure.
                    if e.status not in (429, 503) or self.workers_left < 2:
                        raise
                    refused = True
                self._check_same_resource(segment)
                position = segment.writer.position
                if position <= last:  # a 206 shorter than asked: the rest is another range (nothing at all: odd)
                    if position == first and not refused:
                        raise _GoPlain()
                    self.unassigned.insert(0, [position, last])
                self.finished_bytes += segment.delivered
                self.in_flight.remove(segment)
                if refused:
                    break
            if own_slot:
                self.extra_slots -= 1
                admission.leave(self.tunables.max_connections)  # this connection is done: its slot goes on
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # an interrupt too (Ctrl-C, an app callback's SystemExit): raised in the caller's
            # task, never out of this one, which would then never be done (_stop awaits it) and hold its connection
            if self.failure is None:  # (a MemoryError as its type: the cancels to come may retype it, Download._failed)
                self.failure = MemoryError if isinstance(e, MemoryError) else e
        finally:
            self.workers_left -= 1
            self.wake.set()
