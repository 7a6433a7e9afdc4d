# One download, as download_url() starts it: its run loop, the checks of every answer, its sinks (OUTFILE.part, the
# memory buffer, the chunk callback), its retries, and the errors it ends with.
#
# The path of a byte: the response's readinto_nowait/readinto fills the thread's read buffer (read_nowait/read make
# the chunk itself in stream mode), and the chunk goes to the .part, the memory buffer or the chunk callback before
# run awaits anything else.
from micropython import const
from time import ticks_diff, ticks_ms

from .. import _log  # (its functions named through it: one global, and a full heap can still log)
from . import admission, errors, partfile

_CHUNK = const(1024)
_ASK_AGAIN = const(-2)  # _accept: the answer is no part of the resource and the bytes held went: ask at once
_TRIES = const(3)  # attempts in a row that gain no byte before giving up: the spec's "3 tries"
_READ_TIMEOUT = const(10)  # seconds without a byte before an attempt counts as failed
_ASSUMED_SIZE = const(102400)  # the progress denominator when no size is known (the spec's 100 KB)
_SPEED_MS = const(1000)  # speed_callback is called about this often
_SMALLEST_CHUNK = const(128)  # stream mode halves its chunks in a fragmented heap down to this (fitting_bytearray's)
_FIRST_ROOM = const(4096)  # memory mode's first buffer for a body of unknown length (it doubles from there)
_MOST_DOUBLINGS = const(16)  # the retry wait doubles this often at most (then retry_max_ms caps it anyway)
_ASK_ABOVE = const(16384)  # a buffer up to this size is made without asking gc.mem_free(), which scans the heap
_ENOSPC = const(28)  # no space left on the device (MicroPython's errno module has no name for it)
_DIRECTORY = const(0x4000)  # the bit of os.stat()'s mode that marks a directory
_SLICE = const(4096)  # bytes handed to a sink between two looks at the clock (see _TURN_MS)
_TURN_MS = const(20)  # the longest a slow sink (a flash write, the app's callback) holds the loop (the UI) unturned
_LONGEST_MS = const(0x0FFFFFFF)  # aiohttp.client's: the longest wait 32-bit ticks time; a longer deadline= is none

# A download's state, which downloads() reports by name. (Public: the ones segments.py sets too.)
_QUEUED = const(0)
CONNECTING = const(1)
DOWNLOADING = const(2)
_DONE = const(3)
_FAILED = const(4)

_len = len  # a module global is found by hash, a builtin by a search, at every call (see docs/design.md)


class Download:
    # Defaults live on the class, and __init__ sets only what differs (see docs/design.md: no __slots__).
    # downloads() reports these fields as they are.
    tunables = None  # the DownloadManager class, whose attributes are the tunables: set by download_manager
    total_size = progress_callback = speed_callback = chunk_callback = sha256 = max_size = raise_errors = None
    deadline = outfile = None
    deadline_ticks = None  # ticks_ms when deadline= ends the download, from the moment it queues for its slot
    priority = 0
    chunk_size = _CHUNK
    tries = _TRIES
    timeout = _READ_TIMEOUT
    redact_url = False
    headers = {}  # the caller's, Range taken out (never changed in place: shared by downloads that have none)
    range_start = 0  # the resource bytes the caller wants: [range_start, range_end]
    range_end = None
    kept = 0  # bytes of the resource already in the .part when this download began (a resume)
    delivered = 0  # bytes this download handed on, each counted once it reached its sink
    resource_size = None  # the whole resource's size, once an answer told it
    validator = None  # ETag or Last-Modified: for If-Range on a resume (unless weak), and to tell a changed resource
    content_coded = False  # an answer came gzip/deflate-coded: a retry starts over (see _request)
    no_range = False  # a coded 206 came: its ranges count coded bytes, so requests ask for the whole resource
    unwanted = 0  # bytes of this answer before the wanted range, read and dropped (a 200 answer to a range request)
    length_is_ours = False  # this answer ends at its length (our range's end, 0 after a 416, its framing cut after it)
    deliver_until = None  # a coded answer to a range request: read to its end (its checksum), hand on up to here
    state = _QUEUED
    speed = 0
    file = memory = hasher = None
    percent_said = -1  # the last percent given to progress_callback
    reconnects = 0  # requests made again after a failure (see _retry_wait)
    recorded = False  # the .part's record names this download's resource (see _record_part)
    segmented = False  # a Segmented download tries ranged connections first (see segments.py)
    linger = True  # its session stays open session_idle_ms once idle (False: closed at once, see download_manager)

    def __init__(self, url, outfile, chunk_callback, total_size, headers, options):
        self.url = url
        if outfile is not None:
            self.outfile = outfile
        if chunk_callback is not None:
            self.chunk_callback = chunk_callback
        if total_size is not None:
            self.total_size = total_size
        # download_url's keywords (download_manager checked their names) become attributes of the same name, each
        # set only when it differs from the class's default
        for name, value in options.items():
            if name == "segments" or value is None or value == getattr(self, name):
                continue  # (segments= is Segmented's)
            if value or name not in ("tries", "timeout"):  # 0 tries or seconds: the default
                setattr(self, name, value)
        sent = {}
        for name, value in (headers or {}).items():
            if name.lower() == "range":
                asked = _parse_range(value)
                if asked is None:  # a suffix, several ranges: an answer to it could not be placed in the resource
                    raise ValueError("Range %r: only bytes=FIRST- and bytes=FIRST-LAST are supported" % (value,))
                self.range_start, self.range_end = asked
                continue
            sent[name] = value
        if sent:
            self.headers = sent

    def mode(self):
        # (a method: a property would make every attribute store on a download look through its class first)
        return "file" if self.outfile else ("stream" if self.chunk_callback else "memory")

    def log(self, what, error=None):
        # One line about this download: what, then why (an error); the URL redacted if asked, also inside the reason
        # (errors quote it). A heap too full for the line still gets one: the failure ends as documented.
        try:
            if error is not None:
                what = ("%s (%s): %s" % (what, error.reason, error) if isinstance(error, errors.DownloadError)
                        else "%s: %r" % (what, error))
            line = "download of %s %s" % (self.url, what)
            line = _log.redact(line) if self.redact_url else line
        except MemoryError:
            line = "a download failed (no heap left to say more)"
        _log.warning("DownloadManager", line)

    # -- the run loop ---------------------------------------------------------------------------------------------

    async def run(self):
        # The whole download in this one coroutine frame, held while the body streams (see docs/design.md): the
        # session and a connection slot, then a loop that takes one chunk per turn, sending a request first whenever
        # no answer is being read, until the body is complete or another try cannot help. The cleanup runs on every
        # way out, cancellation included.
        try:
            sess = self._enter()
        except Exception as e:  # its outfile is being downloaded already, no heap for the session: nothing is held
            return self._failed(e)
        if sess is None:
            return None if self.mode() == "memory" else False  # the documented failure
        admitted = complete = at_sink = False
        resp = None  # the answer being read; None between requests
        try:
            sess = await self._admit(sess)  # (a new session if close_session() came while it waited for its slot)
            admitted = True
            if self.segmented and await self._segments(sess):
                return True
            end = self._begin()  # the deadline in ticks, or None
            fails = gained = sunk = 0  # sunk: bytes handed to the sink since the clock was last looked at
            since = ticks_ms()  # when this loop last gave others a turn of its own accord
            while not complete:
                if sunk >= _SLICE:  # the socket may never make it wait while the sink is slow: a turn by the clock
                    sunk = 0
                    if ticks_diff(ticks_ms(), since) >= _TURN_MS:
                        import asyncio  # (loaded already: aiohttp runs on it)

                        await asyncio.sleep_ms(0)
                        since = ticks_ms()
                try:
                    if resp is None:  # a request: the first, or after a failure or a whole answer that fell short
                        gained = max(gained, self.delivered)  # the most held (bytes got again after a start-over: none)
                        left = -1  # (until this answer is accepted)
                        resp = await self._request(sess, end)  # no `async with`: its context would be held too
                        left = self._accept(resp)  # body bytes to read; None: until the server ends the body
                        if left == _ASK_AGAIN:  # a new plan, not a failed try: bounded, as nothing is held now
                            resp.release()
                            resp = None
                            continue
                        buf, view, size = self._reader(left)
                        file = self.file
                        # a chunk has more to do than reach its sink: a plain download looks none of it up per chunk
                        extra = (self.unwanted or self.max_size is not None or self.hasher is not None
                                 or self.progress_callback is not None or self.speed_callback is not None
                                 or self.deliver_until is not None)
                        # file mode with nothing else to do: _straight's, then the steps below (a wait, the end)
                        straight_write = file.write if file is not None and not extra else None
                    if straight_write is not None and (left is None or left >= size):
                        left = self._straight(resp, buf, view, size, left, straight_write)
                        await resp.turn()  # the fair share or _TURN_MS came: others' turn; the socket ran dry: a wait
                        since = ticks_ms()
                    n = size if left is None or left >= size else left
                    if not n and not resp.at_eof() and not self.length_is_ours:
                        n = size  # the announced length came: the answer's own framing must end here too
                    if extra and self.unwanted and self.unwanted < n:  # the unwanted bytes are read apart, dropped
                        n = self.unwanted
                    if buf is not None and n:  # what the socket holds already is read without an await (it allocates)
                        data = buf if n == size else view[:n]
                        n = resp.readinto_nowait(data) or await resp.readinto(data)
                    elif n:  # stream mode: the bytes object the socket makes is the chunk itself
                        data = resp.read_nowait(n) or await resp.read(n)
                        n = _len(data)
                    if not n:
                        ended, resp = resp, None  # (what _answer_ended raises is a failed try, not a cut after the end)
                        complete = self._answer_ended(ended, left, gained)
                        continue
                    if left is not None:
                        left -= n
                    if left is not None and left < 0:  # (below 0 only as the framing went on after its length came)
                        self._restart()  # none of the answer is trusted: it starts over (stream mode fails)
                        raise errors.NetworkError("the answer holds more than the length it announced")
                    if view is not None and n != size:
                        data = view[:n]
                    if extra:
                        data = self._screen(data, n)
                        if data is None:
                            continue
                        n = _len(data)
                    at_sink = True  # until the next read, what fails is the sink's: a full disk, the app's callback
                    if file is not None:
                        file.write(data)
                    elif buf is not None:
                        self._store(data, self.delivered + n)
                    else:  # the socket's own bytes object goes out, and only the callback may keep it
                        data = self.chunk_callback(data)
                    if buf is None and data is not None and hasattr(data, "send"):  # an async callback's coroutine
                        await data
                        data = None
                    at_sink = False
                    self.delivered += n
                    sunk += n
                    if extra and left != 0 and self._report_due():
                        await self._report()
                except Exception as e:
                    memory = isinstance(e, MemoryError)  # (read once: the next exception made may retype it, _failed)
                    # The network's failure (a cut, a stall) as the end of the framing was read after all the bytes an
                    # answer announced: they are all here, and no more came. The next turn ends it (in the try).
                    if (resp is not None and left == 0 and not at_sink and not memory
                            and isinstance(errors.classify(e, self.timeout), errors.NetworkError)):
                        self.length_is_ours = True
                        continue
                    if resp is not None:
                        resp.release()
                        resp = None
                    if memory and not isinstance(e, MemoryError):  # the release made an exception, which retyped it
                        e = MemoryError()  # (as it was, for what reads it below: a sink's, or an app callback's own)
                    if memory and not at_sink:
                        if self.chunk_callback is None or self.chunk_size <= _SMALLEST_CHUNK:
                            return self._failed(e, True)
                        # Stream mode, no room for a chunk's bytes in a heap cut into pieces. Bytes the socket gave
                        # up were never handed out: the next request resumes after the last that was, in chunks
                        # half as big. (A read is not retried in place: the bytes object is made after the read.)
                        self.chunk_size >>= 1
                        e = errors.NetworkError("out of memory for a chunk: going on in chunks of %d bytes"
                                                % self.chunk_size)
                    fails = 0 if self.delivered > gained else fails + 1  # progress was made: a fresh budget
                    await self._retry_wait(e, fails, end, at_sink)  # or raises: no more tries
                    at_sink = False
            return await self._finish()
        except Exception as e:
            return self._failed(e)
        finally:
            try:
                if resp is not None:
                    resp.release()
            finally:  # (the slot and the session go back whatever a heap that just ran out fails above)
                self._exit(admitted)

    # What run does before and after its attempts, in plain methods: their locals would be slots in run's frame.
    # A segment overrides them: the Segmented download it is part of holds the session, the slot and the listing.

    def _enter(self):
        # -> the session, or None (logged) without aiohttp; LocalFileError while another download writes its outfile
        sess = admission.acquire_session(self)
        if sess is None:
            self.log("cannot start: aiohttp is not available")
        return sess

    def _admit(self, sess):
        ms = None if self.deadline is None else self.deadline * 1000
        if ms is not None and ms < _LONGEST_MS:  # (the wait for a slot counts)
            from time import ticks_add

            self.deadline_ticks = ticks_add(ticks_ms(), int(max(ms, 0)))
        return admission.admit(self.priority, self.tunables.max_connections, self.deadline_ticks, sess)

    def _exit(self, admitted):
        if admitted:
            admission.leave(self.tunables.max_connections, True)
        self.close()  # also on cancellation: the .part stays for a resume
        admission.release_session(self.tunables.session_idle_ms if self.linger else 0, self)

    def _failed(self, e, memory=False):
        # -> the documented failure value, or raises: a DownloadError with raise_errors, an app callback's exception
        # always (as it raised it), anything else as it is (a defect is never hidden behind None/False).
        if self.state == _FAILED:  # the run loop's call raised what it said (raise_errors): said once, it goes on
            raise e
        # A MemoryError made in a full heap is MicroPython's one emergency exception object, which the next exception
        # made in a full heap retypes: its type is read once, before anything here can make one (memory: the caller
        # read it, before it made one).
        memory = memory or isinstance(e, MemoryError)
        if memory or isinstance(e, errors.OutOfMemory):
            # The heap back first, for the words that say why: the buffers go, and what a stale word the failed
            # deep call chain left on the C stack (the collector scans it conservatively) kept of the one too big
            import gc

            self.close()
            gc.collect()
            try:
                if memory:
                    e = errors.OutOfMemory("out of memory")
                self.state = _FAILED
            except MemoryError:  # a heap full of what others hold: the documented failure all the same, unsaid
                if self.raise_errors:
                    raise
                return None if self.mode() == "memory" else False
        else:
            self.state = _FAILED
        if isinstance(e, errors.CallbackError):
            self.log("stopped by its callback", e.error)
            raise e.error
        if isinstance(e, OSError) and self.outfile is not None:
            # the run loop sorted the network's OSErrors: one that reaches here is the flash's
            e = self._file_error(self.outfile, e)
        if not isinstance(e, errors.DownloadError):
            self.log("failed", e)
            raise e
        if isinstance(e, errors.LocalFileError) and e.full:
            # A full flash gets its space back: a .part it has no room to finish is no resume (docs/decisions.md)
            self.close()
            self._discard_part()
        self.log("failed", e)
        if self.raise_errors:
            raise e
        return None if self.mode() == "memory" else False

    def _begin(self):
        # The sinks, set up once before the first request -> the deadline in ticks, or None
        if self.sha256:
            import hashlib

            self.hasher = hashlib.sha256()
        if self.mode() == "file":
            self._open_file()
        if self.speed_callback is not None:
            self.speed_since, self.speed_from = ticks_ms(), 0
        return self.deadline_ticks

    def _request(self, sess, end):
        # -> this attempt's GET, for run to await: our headers, a Range from where we stopped, the timeouts. A plain
        # method: a coroutine frame keeps what its expressions left in its stack slots until overwritten.
        import aiohttp

        self.state = CONNECTING
        if sess.closed:
            raise errors.NetworkError("the session was closed (close_session) during the download", retry=False)
        if self.content_coded and self.delivered:
            # A content-coded body can't be resumed: Range counts encoded bytes, `delivered` decoded ones
            if self.mode() == "stream":
                raise errors.NetworkError("coded body cut short after %d bytes were handed out" % self.delivered,
                                          retry=False)
            self._restart()
        pos = self.range_start + self.kept + self.delivered
        headers = with_user_agent(dict(self.headers), self.tunables.user_agent)  # let go once it is sent
        if (pos or self.range_end is not None) and not self.no_range:
            headers["Range"] = "bytes=%d-%s" % (pos, "" if self.range_end is None else self.range_end)
            if self.validator and (self.kept or self.delivered) and not self.validator.startswith("W/"):
                headers["If-Range"] = self.validator  # (a weak ETag matches no If-Range, RFC 9110 13.1.5)
        total = None
        if end is not None:
            total = ticks_diff(end, ticks_ms()) / 1000
            if total <= 0:
                raise errors.DownloadTimeout("deadline reached")
        return sess.get(self.url, headers=headers, ssl=admission.tls_context(self.tunables.ca),
                        timeout=aiohttp.ClientTimeout(total=total, connect=self.timeout, sock_read=self.timeout))

    def _accept(self, resp):
        # An answer's status and headers, checked before a byte of its body is taken -> the body bytes to read (None:
        # until the server ends it), self.unwanted of them before the wanted ones; 0 when the .part already is the
        # whole resource; _ASK_AGAIN when it confirms none of the bytes held, which went. Raises for an answer that is
        # no part of the resource.
        pos = self.range_start + self.kept + self.delivered  # as asked for in _request: nothing came in between
        status = resp.status
        headers = resp.headers
        unwanted = 0
        if self.length_is_ours:
            self.length_is_ours = False
        if status == 206:
            from aiohttp.response import content_codings

            # A coded answer to our Range counts coded bytes, where no decoder can start: the whole, once, instead
            if (pos or self.range_end is not None) and not self.no_range and content_codings(headers):
                self._restart()
                self.no_range = True
                return _ASK_AGAIN
            length = self._partial(headers, pos)
        elif 200 <= status < 300:
            if pos:  # Range ignored (or If-Range says the resource changed): start over from byte 0
                self._restart()
                unwanted = self.range_start
            length = resp.content_length if status != 204 else 0  # (a 204 ends at its head, whatever it says)
            # Content-Length counts coded bytes and reads hand out decoded ones, so a coded body's length is
            # unknown (the client still fails one that does not end)
            from aiohttp.response import content_codings

            if content_codings(headers):
                length, self.content_coded = None, True
                if self.range_end is not None:  # its decoded bytes past the range are read (to the checksum), dropped
                    self.deliver_until = self.range_end + 1
            elif status == 200 and length is not None:
                self.resource_size = length
                if unwanted and length <= unwanted:  # no byte of the range exists: what a 416 says, said otherwise
                    raise self._past_the_end(length)
            if (self.range_end is not None and not self.content_coded
                    and (length is None or length > self.range_end + 1)):
                self.length_is_ours = True  # range_end + 1 is our cap: the body goes on past it, or may end before
                length = self.range_end + 1
        elif status == 416 and (self.kept or self.delivered):
            # (with If-Range sent, a changed resource would have come whole: a 416 is about the one we hold, unless
            # it names another size than an answer before did: then If-Range was ignored. Without If-Range, only the
            # caller's resume is taken at its word.)
            if ((self.validator is not None and not self.validator.startswith("W/") or not self.delivered)
                    and self.resource_size in (None, pos)
                    and headers.get("Content-Range", "").endswith("/%d" % pos)):
                self.length_is_ours = True  # its body, if any, is an error page: not one byte of the resource
                length = 0  # we hold the whole resource already (the answer before was cut after its last byte)
            else:
                self._restart()  # what we hold is not confirmed (apache's 416 names no size): the resource comes whole
                return _ASK_AGAIN
        elif status == 416 and pos and not self.no_range and _invites_coding(self.headers):
            self.no_range = True  # a coded range counts coded bytes: past them may still be inside the decoded whole
            return _ASK_AGAIN
        else:
            raise http_error(resp)
        if self.validator is None:
            # A weak ETag goes in no If-Range, but a resume's 206 that names another was cut from another version
            # (apache weakens a file's ETag for the second after it changed): see _opaque
            validator = headers.get("ETag") or headers.get("Last-Modified")
            if validator is not None:  # (an attribute set is a slot in its table)
                self.validator = validator
        if self.max_size is not None and length is not None and (
                self.kept + self.delivered + length - unwanted > self.max_size):
            raise errors.DownloadError("body of %d bytes exceeds max_size=%d" % (length, self.max_size))
        if self.outfile is not None:
            self._record_part()
        if unwanted != self.unwanted:
            self.unwanted = unwanted
        resp.headers = None  # what the download needs of the head is copied: the text goes
        if resp.history:  # and so do the heads of the redirects on the way (aiohttp keeps them)
            resp.history = ()
        self.state = DOWNLOADING
        return length

    def _partial(self, headers, pos):
        # A 206 answer -> the body bytes to read. Its Content-Range must start where we asked, and be of the
        # resource we have the rest of: another validator or total means it changed (a server that ignores
        # If-Range sends the new one's bytes), so start over.
        content_range = headers.get("Content-Range")
        got = parse_content_range(content_range)
        if not pos and self.range_end is None:  # we asked for no range: only the whole resource is an answer
            if got is None or got[0] or got[2] is None or got[1] != got[2] - 1:
                raise errors.HTTPError("206 to a request for the whole resource: %s" % content_range, 206)
        if got is None or got[0] != pos:
            self._restart()  # not the bytes we asked for: start over (stream mode can't take chunks back)
            raise errors.NetworkError("206 with a Content-Range not starting at %d: %s" % (pos, content_range))
        first, last, total = got
        validator = headers.get("ETag") or headers.get("Last-Modified")
        if (validator is not None and self.validator is not None and _opaque(validator) != _opaque(self.validator)
                or total is not None and self.resource_size is not None and total != self.resource_size):
            self._restart()
            raise errors.NetworkError("the resource changed during the download (now %s, %s bytes)"
                                      % (validator, total))
        if total is not None:
            self.resource_size = total
        if self.range_end is not None and last > self.range_end:
            self.length_is_ours = True  # more than asked for: only the range (a segment's neighbour), no more read
            return self.range_end - pos + 1
        return last - first + 1

    def _reader(self, left):
        # -> (buffer, its memoryview, read size) for an answer whose head is let go, with left body bytes to read
        # (None: unknown). File and memory mode read into the thread's shared buffer, memory mode into its result's
        # buffer too, made now (not in _accept, while a head of up to 32 KB was still held); stream mode reads none
        # (the bytes object the socket makes is the chunk), only the largest size such an object fits in the heap.
        if left is not None and self.mode() == "memory":
            body = self.delivered + left - self.unwanted
            self._memory_room(body, self.delivered, body)
        if self.chunk_callback is not None:
            from aiohttp.response import fitting_bytearray

            # the largest read whose bytes object (and the NUL after it) fits in the heap now
            return None, None, _len(fitting_bytearray(self.chunk_size + 1)) - 1
        buf, view = admission.read_buffer(self.chunk_size)
        return buf, view, _len(buf)  # smaller in a fragmented heap (see aiohttp.response.fitting_bytearray)

    def _screen(self, data, n):
        # A chunk's checks before its sink -> its bytes that go on (data or its first bytes), None for none: none
        # before the wanted range (a 200 answer to a range request), none past its end; then max_size, in every
        # mode, before a byte goes out; then sha256
        if self.unwanted:
            self.unwanted -= n
            return None
        wanted = n
        if self.deliver_until is not None:
            wanted = max(0, min(n, self.deliver_until - self.range_start - self.kept - self.delivered))
            if not wanted:
                return None
        if self.max_size is not None and self.kept + self.delivered + wanted > self.max_size:
            raise errors.DownloadError("body exceeds max_size=%d" % self.max_size)
        if wanted != n:
            data = data[:wanted]
        if self.hasher is not None:
            self.hasher.update(data)
        return data

    def _straight(self, resp, buf, view, size, left, write):
        # File mode with nothing else to do: while the answer holds a whole chunk more, chunks go from the socket to
        # the file in a few steps (docs/design.md: lookups per chunk). -> left less the bytes written (None stays
        # None). The counts are told once per run of chunks, exact whatever ended it.
        room = resp.straight() - size  # (a whole chunk more fits while the bytes read stay <= room)
        if left is not None and left - size < room:
            room = left - size
        if room < 0:  # (not a whole chunk: the awaited read takes what is left, and the end)
            return left
        sock = resp.connection.sock
        read = written = n = 0
        # A slow flash gets the loop's turn by the clock (due), looked at every _SLICE bytes while it is slow
        due = False
        began = ticks_ms()
        stop = _SLICE if _SLICE < room else room
        try:
            while True:
                while read <= stop:
                    n = sock.readinto(buf, size)
                    if not n:  # None: nothing waits; 0: the end, which the awaited read reports
                        break
                    read += n
                    write(buf if n == size else view[:n])
                    written = read
                if not n or stop == room:
                    break
                spent = ticks_diff(ticks_ms(), began)
                due = spent >= _TURN_MS
                if due:
                    break
                stop = room if not spent or stop + _SLICE > room else stop + _SLICE  # (no ms yet: a fast sink)
        except OSError as e:
            if written < read:  # the file failed: its chunk was read, and never reached the file
                raise self._file_error("cannot write %s.part" % self.outfile, e)
            raise
        finally:
            resp.went_straight(read, n is None, due)
            self.delivered += written
        return None if left is None else left - written

    def _answer_ended(self, resp, left, gained):
        # The end of an answer -> True when the body is complete, False when a request for the rest comes next (a
        # whole answer shorter than asked: a server's range cap). Raises for an answer that ended short.
        resp.release()
        if left and not self.length_is_ours:  # the server announced more than it sent
            raise errors.NetworkError("response ended %d bytes early" % left)
        if self.range_start and not self.kept + self.delivered:  # (a 206 holds a byte: this answer was a whole one)
            raise self._past_the_end(self.range_start - self.unwanted)  # it ended before the caller's range began
        if self.resource_size is None or self.content_coded:
            return True  # no size known: what the server framed is all there is
        end = self.resource_size if self.range_end is None else min(self.range_end + 1, self.resource_size)
        missing = end - (self.range_start + self.kept + self.delivered)
        if missing > 0 and self.delivered <= gained:  # nothing gained: a failed attempt (the next asks again)
            raise errors.NetworkError("the answer ended %d bytes before the end of what was asked for" % missing)
        return missing <= 0

    def _past_the_end(self, size):
        # The caller's range starts past the resource's end (size bytes): what a server that honours Range says
        return errors.HTTPError("HTTP 416: the range starts at %d, the resource has %d bytes"
                                % (self.range_start, size), 416)

    def _retry_wait(self, e, fails, end, at_sink):
        # What an attempt raised -> the wait before the next attempt, or raises what ends the download. fails:
        # attempts in a row that gained no byte (the spec's 3 tries); every attempt counts towards max_reconnects
        # and lengthens the wait, so a link that keeps dropping after a little progress ends too.
        if at_sink and self.chunk_callback is not None:  # the app's callback raised it: its own, never retried
            e = errors.CallbackError(e)
        elif at_sink and self.file is not None and isinstance(e, OSError):
            e = self._file_error("cannot write %s.part" % self.outfile, e)
        err = errors.classify(e, self.timeout)
        if err is None:
            raise e
        self.reconnects += 1
        tunables = self.tunables
        if not err.retry or fails >= self.tries or self.reconnects > tunables.max_reconnects:
            raise err
        # The wait: the server's Retry-After, else exponential with jitter; never over retry_max_ms, nor the deadline
        import random

        delay = err.retry_after
        if delay is None:
            doublings = min(self.reconnects - 1, _MOST_DOUBLINGS)
            delay = tunables.retry_base_ms * (1 << doublings) / 1000 * (0.5 + random.random())
        delay = min(delay, tunables.retry_max_ms / 1000)
        if end is not None and ticks_diff(end, ticks_ms()) / 1000 <= delay:
            raise errors.DownloadTimeout("deadline reached")
        return admission.rest(delay)

    # -- progress -------------------------------------------------------------------------------------------------

    def _report_due(self):
        # A cheap check per chunk; the coroutine _report() is made only when a callback is really due
        if self.progress_callback is not None and self._percent_now() > self.percent_said:
            return True
        return self.speed_callback is not None and ticks_diff(ticks_ms(), self.speed_since) >= _SPEED_MS

    def _percent_now(self):
        # 100 is said once, at the very end; an unknown or wrong size never overshoots
        return min(self.done() * 100 // max(self.expected_size() or _ASSUMED_SIZE, 1), 99)

    def done(self):
        # -> the bytes done, as the percentages and downloads() count them. An open range (bytes=N-) is a resume the
        # caller keeps, as the OS updater does: its N bytes count as done, so the bar goes on from where it stood.
        if self.range_end is None and not self.total_size:
            return self.range_start + self.kept + self.delivered
        return self.kept + self.delivered

    def expected_size(self):
        # -> what done() reaches once the download is complete, None while unknown: total_size as the caller gave it,
        # else the caller's closed range of the resource (its end cut at the resource's), else the resource. (A
        # resume of a .part counts from byte 0: kept holds the bytes before range_start, which is 0 then.)
        if self.total_size:
            return self.total_size
        end = self.resource_size
        if self.range_end is None:
            return end
        if end is None or end > self.range_end:
            end = self.range_end + 1
        return max(end - self.range_start, 0)

    async def _report(self):
        if self.progress_callback is not None:
            percent = self._percent_now()
            if percent > self.percent_said:
                self.percent_said = percent
                await _call(self.progress_callback, percent)
        if self.speed_callback is not None:
            now = ticks_ms()
            elapsed = ticks_diff(now, self.speed_since)
            if elapsed >= _SPEED_MS:
                self.speed = (self.delivered - self.speed_from) * 1000 // elapsed
                self.speed_since, self.speed_from = now, self.delivered
                await _call(self.speed_callback, self.speed)

    async def _finish(self):
        # The body is complete: checked against sha256=, 100 % said, OUTFILE in place -> the download's result
        if self.hasher is not None:
            import binascii

            got = binascii.hexlify(self.hasher.digest()).decode()
            if got != self.sha256.lower():
                if self.file is not None:
                    self.file.close()
                    self.file = None
                    self._discard_part()  # wrong bytes are no base for a resume
                raise errors.IntegrityError("sha256 mismatch: got %s" % got)
        result = True
        if self.mode() == "memory":  # the bytes are made before 100 % is said: a copy that does not fit fails it
            memory, self.memory = self.memory, None
            if memory is None:
                result = b""
            else:
                result = bytes(memory) if len(memory) == self.delivered else bytes(memoryview(memory)[: self.delivered])
            memory = None
        if self.progress_callback is not None:  # before OUTFILE is replaced: the callback may still stop it
            self.percent_said = 100
            await _call(self.progress_callback, 100)
        if self.file is not None:
            part = self.outfile + ".part"
            record = part + ".state"  # (made first: once OUTFILE is in place, no want of heap fails it here)
            try:
                self.file.close()
                self.file = None
                partfile.replace(part, self.outfile)
                partfile.remove(record)
            except OSError as e:
                raise self._file_error("cannot finish %s" % self.outfile, e)
        self.state = _DONE
        return result

    # -- the sinks ------------------------------------------------------------------------------------------------

    def _file_error(self, what, e):
        # The filesystem's OSError -> the LocalFileError the download ends with; a full one says so in words (a port's
        # OSError may show ENOSPC as the bare number 28)
        full = getattr(e, "errno", None) == _ENOSPC
        error = errors.LocalFileError("%s: %s%s" % (what, e, " (no space left)" if full else ""))
        if full:
            error.full = True
        return error

    def _discard_part(self):
        # OUTFILE.part and its record go: nothing in them is worth a resume
        part = self.outfile + ".part"
        partfile.remove(part)
        partfile.remove(part + ".state")

    def _open_file(self):
        import os

        try:
            directory = os.stat(self.outfile)[0] & _DIRECTORY
        except OSError:
            directory = 0
        if directory:  # (else the whole body would come, for a rename that must fail)
            raise errors.LocalFileError("%s is a directory" % self.outfile)
        part = self.outfile + ".part"
        mode = "wb"
        if self.range_start and self.range_end is None:
            # A resume ("Range: bytes=N-", N = get_resume_position()): the partial data is continued if it is exactly
            # N bytes long, whether it sits in OUTFILE.part or in OUTFILE itself
            n = partfile.size_of(part)
            if n == self.range_start:
                if self._resumable(partfile.read_record(part)):
                    mode = "ab"
                else:  # the partial data is of something else: the caller wants this resource, all of it
                    self.range_start = 0
            elif n < 0 and partfile.size_of(self.outfile) == self.range_start:
                partfile.remove(part + ".state")  # (it described a .part that is gone)
                try:
                    with open(part, "wb") as copy:
                        partfile.each_block(self.outfile, self.chunk_size, copy.write)
                except OSError as e:
                    raise self._file_error("cannot copy %s to %s" % (self.outfile, part), e)
                mode = "ab"
            if mode == "ab":
                self.kept, self.range_start = self.range_start, 0
        try:
            self.file = open(part, mode)
        except OSError as e:
            raise self._file_error("cannot write %s" % part, e)
        if mode == "wb":
            partfile.remove(part + ".state")  # it describes a .part that is gone
        if self.kept and self.sha256:  # the bytes already on disk are hashed once, before new ones arrive
            partfile.each_block(part, self.chunk_size, self.hasher.update)

    def _resumable(self, record):
        # Whether a .part with this record may be continued: not a segmented one (it has holes), not another URL's.
        # What it knows of the resource goes into If-Range and the checks of every answer.
        key = partfile.url_key(self.url)
        if record is None or "todo" in record or record.get("url", key) != key or record.get("from"):
            return False  # (from: a caller's range, no prefix of the resource)
        if record.get("v") is not None:
            self.validator = record["v"]
        if record.get("size") is not None:
            self.resource_size = record["size"]
        self.recorded = "url" in record
        return True

    def _record_part(self):
        # File mode, once its resource is known: the record beside the .part, before a byte goes into it
        if not self.recorded:
            record = {"url": partfile.url_key(self.url), "v": self.validator, "size": self.resource_size}
            if self.range_start:  # the .part holds the caller's range from there: no resume may take it for a prefix
                record["from"] = self.range_start
            try:
                partfile.write_record(self.outfile + ".part", record)
            except OSError as e:
                raise self._file_error("cannot write %s.part.state" % self.outfile, e)
            self.recorded = True

    def _restart(self):
        # The bytes we have are no part of the resource the server now sends (it ignored Range, or the resource
        # changed): they go, and what we knew of the resource with them
        if self.mode() == "stream" and self.delivered:
            raise errors.NetworkError("the resource changed or Range was ignored after %d bytes were handed out"
                               % self.delivered, retry=False)
        if self.file is not None:
            try:
                self.file.close()
                self.file = open(self.outfile + ".part", "wb")
            except OSError as e:  # the flash's, not a failed try of the network's
                raise self._file_error("cannot write %s.part" % self.outfile, e)
        if self.recorded:
            self.recorded = False
        if self.validator is not None:
            self.validator = None
        if self.resource_size is not None:
            self.resource_size = None
        self.kept = self.delivered = 0  # (percent_said stays: progress never goes back, it waits until it is passed)
        if self.speed_callback is not None:
            self.speed_from = 0  # the next speed counts the bytes since the start-over
        if self.sha256:
            import hashlib

            self.hasher = hashlib.sha256()

    def _memory_room(self, n, keep, body):
        # Memory mode's one buffer: made once when the size is known, else grown with its first `keep` bytes carried
        # over; `body` of its bytes at least are copied into the result. One byte more than needed: the bytes
        # returned at the end keep their data in a block of len + 1, and the hole this buffer leaves must fit the next
        # download's result.
        memory = self.memory
        if memory is None or len(memory) < n:
            import gc

            # A length a server announced is not allocated blindly: this buffer and, at the end, the bytes copied
            # from it must fit (mem_free counts the whole heap: asked again only when the first answer was no)
            if n + 1 > _ASK_ABOVE and n + 1 + body > gc.mem_free():
                gc.collect()
                if n + 1 + body > gc.mem_free():
                    raise errors.OutOfMemory("a body of %d bytes does not fit in the heap" % n)
            grown = bytearray(n + 1)
            if memory is not None and keep:
                grown[:keep] = memoryview(memory)[:keep]
            self.memory = grown

    def _store(self, data, end):
        # Memory mode: data becomes bytes [end - len(data), end) of the result; the buffer is made on the first chunk
        # when the length is unknown (a chunked or close-delimited body) and doubles as needed
        have = 0 if self.memory is None else len(self.memory)
        if have < end:
            room = max(2 * have, end, _FIRST_ROOM)
            if self.max_size is not None and room > self.max_size:  # (end never passes it: _screen fails that first)
                room = max(self.max_size, end)  # (room past max_size would be for bytes that fail the download)
            self._memory_room(room, end - len(data), end)
        self.memory[end - len(data) : end] = data

    def close(self):
        if self.memory is not None:  # (an attribute set anew would take heap)
            self.memory = None
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
            # A failure before the first byte (a 404, say) leaves no empty .part: it would hide OUTFILE from
            # get_resume_position(). A partial with data stays for a resume.
            try:
                if not self.kept and partfile.size_of(self.outfile + ".part") == 0:
                    self._discard_part()
            except MemoryError:  # (no heap to look: an empty .part stays, and the next download takes it over)
                pass
            except OSError:  # (nor when the flash can't tell; a tuple of both would need heap)
                pass


async def _call(callback, arg):
    # Callbacks may be `async def` (as documented) or plain functions; what one raises is the app's (see run)
    try:
        returned = callback(arg)
        if returned is not None and hasattr(returned, "send"):
            await returned
    except Exception as e:
        raise e if isinstance(e, errors.CallbackError) else errors.CallbackError(e)


def _opaque(validator):
    # An ETag without its weak mark, for the weak comparison of RFC 9110 8.8.3.2: apache sends W/"tag" for a file
    # changed within the last second, and "tag" once a second has passed
    return validator[2:] if validator.startswith("W/") else validator


def _invites_coding(headers):
    # whether the caller's headers let a server code its answer (then it may count a Range in coded bytes): without an
    # Accept-Encoding any coding is acceptable (RFC 9110 section 12.5.3), as apache's AddEncoding takes it
    for name, value in headers.items():
        if name.lower() == "accept-encoding":
            return any(c in value.lower() for c in ("gzip", "deflate", "*"))
    return True


def http_error(resp):
    # An answer that is a failure -> its HTTPError: a transient status is retried, after its Retry-After if any
    status = resp.status
    retry_after = resp.headers.get("Retry-After")
    retry_after = int(retry_after) if retry_after and retry_after.strip().isdigit() else None
    transient = status in (408, 429, 500, 502, 503, 504)  # worth another try
    return errors.HTTPError("HTTP %d %s" % (status, resp.reason), status, retry=transient, retry_after=retry_after)


_os_agent = None  # "MicroPythonOS/<release>", found once: an import that fails searches the filesystem each time


def with_user_agent(headers, user_agent):
    # the User-Agent is ours unless the caller gave one
    global _os_agent
    if not any(name.lower() == "user-agent" for name in headers):
        if not user_agent and _os_agent is None:
            try:
                from mpos import BuildInfo  # MicroPythonOS's (mpos/build_info.py)

                release = BuildInfo.version.release
            except (ImportError, AttributeError):
                release = "0.0.0"
            _os_agent = "MicroPythonOS/" + release
        headers["User-Agent"] = user_agent or _os_agent
    return headers


def parse_content_range(value):
    # "bytes a-b/N" -> (a, b, N or None for "*"); None for anything else, a range that ends before it starts or
    # past its total, and numbers no machine word holds
    try:
        unit, _, spec = value.strip(" \t").partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        first, last, total = int(first), int(last), (None if total.strip() == "*" else int(total))
    except (ValueError, AttributeError):
        return None
    from sys import maxsize

    if unit.lower() != "bytes" or not 0 <= first <= last or total is not None and last >= total or last > maxsize:
        return None
    return first, last, total


def _parse_range(value):
    # A caller's "bytes=a-" or "bytes=a-b" (a <= b; the unit in any case, as RFC 9110 says) -> (a, b or None); None
    # for any other form
    value = value.strip() if isinstance(value, str) else ""
    if value[:6].lower() != "bytes=" or "," in value:
        return None
    first, _, last = value[6:].partition("-")
    if not first.strip().isdigit() or (last.strip() and not last.strip().isdigit()):
        return None
    first, last = int(first), (int(last) if last.strip() else None)
    return None if last is not None and last < first else (first, last)
