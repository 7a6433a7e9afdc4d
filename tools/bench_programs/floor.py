# make bench's program "floor": the least a blocking client does on one socket, the floor our figures are held to
# (tools/bench.py puts it in front of the programs that need it).
import socket, tls

floor_tls = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
floor_tls.verify_mode = tls.CERT_NONE  # as the library's without a CA

def floor_connect(host, port, secure=True):
    # the name looked up, a TCP connection with TCP_NODELAY, the TLS handshake (wrap_socket, blocking)
    address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    sock = socket.socket()
    sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: the unix port names neither
    sock.connect(address)
    return floor_tls.wrap_socket(sock, server_hostname=host) if secure else sock

def floor_head(sock, host, path, close=False):
    # the request written in one piece, its answer's head read line by line; -> the Content-Length
    sock.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n"
               % (path.encode(), host.encode(), b"Connection: close\r\n" if close else b""))
    length = None
    while True:
        line = sock.readline()
        if line in (b"\r\n", b""):
            return length
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])

def floor_body(sock, length, buf, sink=None):
    # length bytes read into buf, each piece handed to sink; -> how many came
    view = memoryview(buf)
    got = 0
    while got < length:
        # a blocking readinto fills all it is given: never more than the answer holds (keep-alive sends no EOF)
        n = sock.readinto(buf, min(len(buf), length - got))
        if not n:
            break
        got += n
        if sink:
            sink(buf if n == len(buf) else view[:n])
    return got
