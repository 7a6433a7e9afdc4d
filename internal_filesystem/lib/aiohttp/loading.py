# What loads on first use loads by one thread at a time, aiohttp's and mpos's alike (mpos/_loading.py takes these):
# MicroPython's imports take no lock, and a second thread would find a module half run. The loading thread itself
# may come back while it loads (a callback that micropython.schedule runs between its bytecodes): it goes on at
# once rather than wait for itself.
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
        return _loading(load, args)
    with _lock:
        _owner = me
        try:
            return _loading(load, args)
        finally:
            _owner = None


def _loading(load, args):
    # -> load(*args); after a MemoryError, no module it left unmade is named in sys.modules
    try:
        return load(*args)
    except MemoryError:
        _forget_unmade()
        raise


def _forget_unmade():
    # MicroPython's mp_obj_new_module names a module in sys.modules before it makes it: a MemoryError in between
    # leaves the name with no module (NULL), which the next import of it returns, and a getattr on that segfaults.
    # .get() reads such a value as None, pop() takes it out (del raises KeyError); a name set to None goes too.
    import sys

    modules = sys.modules
    try:
        again = True
        while again:  # (one pop per pass: a dict changed while iterated)
            again = False
            for name in modules:
                if modules.get(name) is None:
                    modules.pop(name, None)
                    again = True
                    break
    except MemoryError:  # (not even an iterator's room: the MemoryError under way is what the caller gets)
        pass


def load_name(package, module, name):
    # -> name from the package's module, kept in the package's globals: the next lookup finds it without __getattr__
    if name not in package:  # (another thread may have loaded it meanwhile)
        package[name] = getattr(__import__(module, package, None, True, 1), name)
    return package[name]
