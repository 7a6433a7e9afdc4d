# MicroPythonOS services used by apps: `from mpos import DownloadManager, TaskManager`.
from .task_manager import TaskManager
from .net import download_manager as DownloadManager
