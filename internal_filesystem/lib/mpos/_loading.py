# mpos loads what it names on first use (its names, download.py, segments.py) as aiohttp does, under aiohttp's lock:
# aiohttp/loading.py tells why. A module of its own, not mpos/__init__, which in MicroPythonOS's tree is the OS's.
try:
    from aiohttp.loading import load_name, one_at_a_time
except ImportError:  # a build without aiohttp downloads nothing (DownloadManager says so), and loads without a lock

    def one_at_a_time(load, *args):
        return load(*args)

    def load_name(package, module, name):
        return getattr(__import__(module, package, None, True, 1), name)
