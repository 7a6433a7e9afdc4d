# MicroPythonOS services used by apps: `from mpos import DownloadManager, TaskManager`. Each loads with its module
# when first named, as aiohttp's names do: an app that only downloads never pays for TaskManager (docs/performance.md).
from ._loading import load_name, one_at_a_time


def __getattr__(name):
    if name == "__all__":  # `from mpos import *`
        return ["DownloadManager", "TaskManager"]
    if name == "DownloadManager":
        return one_at_a_time(load_name, globals(), "net.download_manager", name)
    if name == "TaskManager":
        return one_at_a_time(load_name, globals(), "task_manager", name)
    try:  # `from mpos import net` asks the package before it imports the module
        return one_at_a_time(__import__, name, globals(), None, True, 1)
    except ImportError:
        raise AttributeError(name)

