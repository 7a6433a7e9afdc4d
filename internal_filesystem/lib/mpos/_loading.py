# What loads on first use loads by one thread at a time (mpos's names, download.py, segments.py): MicroPython's
# imports take no lock, and a second thread would find a module half run. The loading thread itself may come back
# while it loads (a callback that micropython.schedule runs between its bytecodes): it goes on rather than wait for
# itself. A module of its own, not mpos/__init__: in MicroPythonOS's tree that file is the OS's, and mpos must not
# need aiohttp (aiohttp/loading.py does the same for aiohttp).
try:
    import _thread

    _lock = _thread.allocate_lock()
except ImportError:  # a port without threads
    _thread = None

_owner = None  # the thread that holds _lock


def one_at_a_time(load, *args):
    # -> load(*args)
    global _owner
    me = _thread.get_ident() if _thread else None
    if me is None or _owner == me:
        return load(*args)
    with _lock:
        _owner = me
        try:
            return load(*args)
        finally:
            _owner = None
