# make bench's program "code_ram" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import gc
gc.collect()
a = gc.mem_alloc()
from mpos import DownloadManager
import aiohttp
gc.collect()
result(code=gc.mem_alloc() - a, file=aiohttp.__file__)
