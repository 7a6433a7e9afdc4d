# MicroPythonOS services used by apps: `from mpos import DownloadManager, TaskManager`.
from .task_manager import TaskManager
from .net.download_manager import DownloadManager
