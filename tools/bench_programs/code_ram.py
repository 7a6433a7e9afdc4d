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
result(code=imported, used=gc.mem_alloc() - a, file=aiohttp.__file__)
