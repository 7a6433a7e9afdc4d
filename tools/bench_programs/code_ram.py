# make bench's program "code_ram" (tools/bench.py puts the values it is given, URL and the like, in front of it).
# The heap the library holds once imported, and once one download to memory has run (the client and the download
# classes load with it); the session is closed before the second figure, so what is left is code and tables.
import gc
gc.collect()
a = gc.mem_alloc()
from mpos import DownloadManager
import aiohttp
gc.collect()
imported = gc.mem_alloc() - a
DownloadManager.session_idle_ms = 0
assert len(DownloadManager.download_url(URL)) == 1000
gc.collect()
# (run bare: the test helpers, compiled from source, would fill the interned strings' pool, and where its next
# block is made, during these imports or not, moved the figure by 700 bytes)
print('@@RESULT {"code": %d, "used": %d, "file": "%s"}' % (imported, gc.mem_alloc() - a, aiohttp.__file__))
