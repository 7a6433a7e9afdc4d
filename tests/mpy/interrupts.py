# A KeyboardInterrupt (Ctrl-C) at the k-th of the points where one may land, for k = 1, 2, 3 ...
# (tests/test_interrupts.py). Points, counted in one sequence as they come:
#   "loop":   the event loop's wait for sockets and timers (Ctrl-C while the loop sleeps: it leaves the loop itself,
#             no task sees it);
#   "task":   the step of a task about to run, past its first one (Ctrl-C is raised after a branch, and none comes
#             before a coroutine's first line): thrown into it where it awaits. Any task: a download's, its
#             segments', the session's watchdog, the idle session's closer, a websocket's;
#   "sock<"/"sock>": just before and just after a socket call (connect, read, readinto, write): after one, the bytes
#             it moved are gone with the interrupt;
#   "file<"/"file>": the same around a write to OUTFILE.part;
#   "callback": inside an app callback made by callback().
# The same k lands at the same point as long as the server sends the same pieces. Never frozen.
import io
import socket as _socket

from asyncio import core

_GET_FILENO = 10  # MicroPython's stream ioctls: what select.poll asks a Python stream for its descriptor
_CLOSE = 4


class Injector:
    def __init__(self):
        self.count = 0  # points passed so far
        self.at = None  # the point that raises; None: none
        self.landed = None  # the kind of point it landed at, once it did
        self.kinds = None  # the kinds that count (None: all)
        self.error = KeyboardInterrupt
        self.stepped = []  # tasks that took a step since arm()
        self.exempt = []  # tasks no interrupt is thrown into (a test's own)

    def arm(self, k, kinds=None, error=KeyboardInterrupt):
        self.count = 0
        self.at = k
        self.landed = None
        self.kinds = kinds
        self.error = error
        self.stepped = []

    def due(self, kind):
        # -> whether this point is the one to interrupt (counted only if its kind counts)
        if self.at is None or (self.kinds is not None and kind not in self.kinds):
            return False
        self.count += 1
        if self.count != self.at:
            return False
        self.at = None
        self.landed = kind
        return True

    def point(self, kind):
        if self.due(kind):
            raise self.error(kind)


INJECTOR = Injector()


def _wait_io_event(dt, _wait=None):
    INJECTOR.point("loop")
    _wait(dt)
    head = core._task_queue.peek()
    # The task that runs next: ready now, with nothing (a cancel, an error) to be thrown into it already, and past
    # its first step (Ctrl-C is raised after a branch, and none comes before a coroutine's first line)
    if head is None or head.data is not None or core.ticks_diff(head.ph_key, core.ticks()) > 0:
        return
    if head in INJECTOR.exempt:
        return
    if head not in INJECTOR.stepped:
        INJECTOR.stepped.append(head)
    elif INJECTOR.due("task"):
        head.data = INJECTOR.error("task")


class Sock(io.IOBase):
    # A socket whose calls are points; select.poll polls its descriptor
    def __init__(self, *args):
        self.s = _socket.socket(*args)

    def ioctl(self, request, arg):
        if request == _GET_FILENO:
            return self.s.fileno()
        if request == _CLOSE:
            self.s.close()
            return 0
        return -1

    def fileno(self):
        return self.s.fileno()

    def setblocking(self, flag):
        self.s.setblocking(flag)

    def setsockopt(self, *args):
        self.s.setsockopt(*args)

    def close(self):
        self.s.close()

    def connect(self, address):
        INJECTOR.point("sock<")
        self.s.connect(address)
        INJECTOR.point("sock>")

    def readinto(self, buf, n=-1):
        INJECTOR.point("sock<")
        got = self.s.readinto(buf) if n < 0 else self.s.readinto(buf, n)
        INJECTOR.point("sock>")
        return got

    def recv(self, n):
        INJECTOR.point("sock<")
        got = self.s.recv(n)
        INJECTOR.point("sock>")
        return got

    def read(self, n=-1):
        INJECTOR.point("sock<")
        got = self.s.read(n)
        INJECTOR.point("sock>")
        return got

    def write(self, data):
        INJECTOR.point("sock<")
        n = self.s.write(data)
        INJECTOR.point("sock>")
        return n


class _SocketModule:
    # what aiohttp.connection finds as `socket`
    AF_INET = _socket.AF_INET
    SOCK_STREAM = _socket.SOCK_STREAM
    getaddrinfo = _socket.getaddrinfo

    @staticmethod
    def socket(*args):
        return Sock(*args)


class File:
    # OUTFILE.part as a download writes it: its writes are points
    def __init__(self, f):
        self.f = f

    def write(self, data):
        INJECTOR.point("file<")
        n = self.f.write(data)
        INJECTOR.point("file>")
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _open(path, mode="r", *args):
    f = open(path, mode, *args)
    return File(f) if path.endswith(".part") and ("w" in mode or "a" in mode or "+" in mode) else f


def install():
    # The points in place: the loop's wait, the client's sockets, the downloads' .part files
    import aiohttp.connection
    from mpos.net import download

    wait = core._io_queue.wait_io_event
    core._io_queue.wait_io_event = lambda dt: _wait_io_event(dt, wait)
    aiohttp.connection.socket = _SocketModule
    download.open = _open
    try:
        from mpos.net import segments

        segments.open = _open
    except ImportError:
        pass
    return INJECTOR


def callback(take=None):
    # An app callback that is a point, then passes its argument on to take
    def called(arg):
        INJECTOR.point("callback")
        if take is not None:
            return take(arg)

    return called


def left_in_loop(expected=None):
    # stepcancel.loop_is_idle(), naming the coroutine of the task queued first
    from stepcancel import loop_is_idle

    left = loop_is_idle(expected)
    head = core._task_queue.peek()
    if left and head is not None:
        left.append("first: %r (due in %d ms)" % (head.coro, core.ticks_diff(head.ph_key, core.ticks())))
    return left
