# Helpers for test snippets running on MicroPython (on MICROPYPATH in tests only; never frozen).
import json
import sys


def result(**kw):
    # One structured line per call; the pytest side parses these.
    sys.stdout.write("@@RESULT " + json.dumps(kw) + "\n")


def sha256(data):
    import hashlib
    import binascii

    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def sha256_file(path):
    import hashlib
    import binascii

    h = hashlib.sha256()
    buf = bytearray(4096)
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    return binascii.hexlify(h.digest()).decode()


def exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def fd_count():
    import os

    return len(os.listdir("/proc/self/fd"))


def run(coro):
    import asyncio

    return asyncio.run(coro)
