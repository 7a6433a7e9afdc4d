# make bench's program "small_heap" (tools/bench.py puts the values it is given, URL and the like, in front of it).
from mpos import DownloadManager
ok = DownloadManager.download_url(URL, outfile=OUT)  # no event loop running: runs to completion
# the file is checked from CPython: hashing it here would need heap of its own
import mpos.net.download_manager as module
print('@@RESULT {"ok": %s, "file": "%s"}' % ("true" if ok is True else "false", module.__file__))
