# The library, for a firmware's frozen set: `mpos` (DownloadManager, TaskManager) and the aiohttp-compatible client
# beneath it, nothing else. A port's top manifest includes the port's own set and then this file:
# manifests/unix.py, manifests/esp32.py. Tests (tests/) and tools (tools/) are never frozen.
package("mpos", base_path="internal_filesystem/lib")
package("aiohttp", base_path="internal_filesystem/lib")
