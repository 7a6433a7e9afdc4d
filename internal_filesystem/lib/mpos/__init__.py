# MicroPythonOS services used by apps: `from mpos import DownloadManager, TaskManager`. Each loads with its module
# when first named, as aiohttp's names do: an app that only downloads never pays for TaskManager (docs/performance.md).
try:
    import _thread

    _lock = _thread.allocate_lock()
except ImportError:  # a port without threads
    _thread = None

_owner = None  # the thread that holds _lock


def __getattr__(name):
    if name == "__all__":  # `from mpos import *`
        return ["DownloadManager", "TaskManager"]
    if name == "DownloadManager":
        return one_at_a_time(_load, "net.download_manager", name)
    if name == "TaskManager":
        return one_at_a_time(_load, "task_manager", name)
    try:  # `from mpos import net` asks the package before it imports the module
        return one_at_a_time(__import__, name, globals(), None, True, 1)
    except ImportError:
        raise AttributeError(name)


def _load(module, name):
    here = globals()
    if name not in here:  # (another thread may have loaded it meanwhile)
        here[name] = getattr(__import__(module, here, None, True, 1), name)
    return here[name]


def one_at_a_time(load, *args):
    # -> load(*args), by one thread at a time: MicroPython's imports take no lock, and a second thread would find a
    # module half run. The loading thread may come back meanwhile (a callback that micropython.schedule runs between
    # its bytecodes): it goes on rather than wait for itself. (aiohttp/loading.py does the same for aiohttp, which
    # must not need mpos.)
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
