# The TCP socket under a TLS connection, as mbedTLS reads and writes it: it follows the records going by, so that a
# body that ends with the connection is known whole only after the server's close_notify (connection.py, response.py).

import io
import select
from errno import EINVAL, EIO
from micropython import const

_CHANGE_CIPHER_SPEC = const(20)  # TLS record types
_ALERT = const(21)
_STREAM_POLL = const(3)  # the stream ioctls MicroPython's TLS socket passes down to the stream under it
_STREAM_CLOSE = const(4)
_POLL_RD = const(1)  # a poll's readable flag


class Wire(io.IOBase):
    # The TCP socket as mbedTLS reads and writes it. MicroPython's TLS socket reads b"" both for the server's
    # close_notify and for a TCP end without one (mbedTLS maps its transport's EOF to 0 as well), and its stream
    # reads go on past a close_notify to fill the buffer: only the records themselves tell the two apart. TLS 1.2
    # (all MicroPython's mbedTLS speaks) sends an alert's record type in the clear. Before the server's
    # ChangeCipherSpec an alert is a handshake's warning mbedTLS skips (apache's unrecognized_name) or a fatal one
    # that fails the handshake; after it, a fatal alert fails the read, and a warning is taken for the close_notify
    # (another warning's description is encrypted: no TLS 1.2 server is known to send one and go on).
    # Nothing may follow a close_notify, and a server may hold TCP open after it until the client closes (openssl
    # s_server -WWW does): once the alert record is whole, the wire is at its end for mbedTLS and for a poll, as
    # after a FIN, and a read never waits for a FIN that only the client's close would bring.
    # A build with TLS 1.3 hides every record's type: such a body then never counts as whole, the safe side.
    # mbedTLS asks for a record's 5-byte header, then for its body. Called from C inside mbedTLS: nothing may raise.
    ciphered = False  # the server's ChangeCipherSpec came: its records are encrypted from here on
    notified = False  # an alert record came after it: the TLS stream may end cleanly
    ended = False  # that alert record is whole: the wire reads as ended (0), and polls readable
    poller = None  # a select.poll of the TCP socket, made at the first wait on the TLS socket
    header = 0  # bytes of the current record's header read (5: reading its body)
    left = 0  # bytes of the current record's body still to come
    length = 0  # the length read from the header so far
    write_error = 0  # the errno of the TCP write that failed: the connection's writes are over (Connection.send)

    def __init__(self, tcp):
        self.tcp = tcp

    def readinto(self, buf):
        if self.ended:
            return 0
        try:
            n = self.tcp.readinto(buf)
        except OSError as e:
            return -e.errno
        except Exception:
            return -EIO
        i = 0
        while n and i < n:  # follow the records' framing through what came
            header = self.header
            if header == 5:
                step = min(self.left, n - i)
                i += step
                self.left -= step
                if not self.left:
                    self.header = 0
                    self.ended = self.notified
                continue
            if header == 0:
                if buf[i] == _CHANGE_CIPHER_SPEC:
                    self.ciphered = True
                elif buf[i] == _ALERT and self.ciphered:
                    self.notified = True
            if header >= 3:
                self.length = (self.length << 8 | buf[i]) if header == 4 else buf[i]
            self.header = header = header + 1
            i += 1
            if header == 5:
                self.left = self.length
                if not self.left:
                    self.header = 0
                    self.ended = self.notified
        return n

    def write(self, buf):
        # A write that fails is kept here, never told to mbedTLS: MicroPython's TLS socket fails every read after a
        # failed write (modtls_mbedtls.c, last_error), and the answer a server sent before it stopped reading (a 413
        # to an upload) must still be read. mbedTLS is told the bytes went (so it neither holds a record to send
        # again nor has a waiter poll a socket in error, which is always ready); Connection.send raises the error.
        if self.write_error:
            return len(buf)
        try:
            return self.tcp.write(buf)
        except OSError as e:
            self.write_error = e.errno or EIO
            return len(buf)
        except Exception:
            return -EIO

    def setblocking(self, flag):
        self.tcp.setblocking(flag)

    def ioctl(self, request, arg):
        if request == _STREAM_POLL:
            if self.ended and arg & _POLL_RD:
                return _POLL_RD
            try:
                poller = self.poller
                if poller is None:  # (kept once whole: a register() out of heap halfway leaves a slot poll() crashes on)
                    poller = select.poll()
                    poller.register(self.tcp)
                    self.poller = poller
                poller.modify(self.tcp, arg)
                for entry in poller.ipoll(0):
                    return entry[1]
                return 0
            except Exception:
                return arg  # (no memory for the poller: ready, so the TLS socket's read or write says what it is)
        if request == _STREAM_CLOSE:
            try:
                self.tcp.close()
            except OSError:
                pass
            return 0
        return -EINVAL
