# Freezes the DownloadManager and the bundled aiohttp client into an ESP32 firmware build:
#   make -C ports/esp32 BOARD=ESP32_GENERIC_S3 FROZEN_MANIFEST=/path/to/this/manifest.py
# The board's own manifest comes first, so asyncio and the rest of the standard frozen set stay.
include("$(PORT_DIR)/boards/manifest.py")

# `mpos` (DownloadManager, TaskManager) and the aiohttp-compatible client it stands on.
# Tests (tests/) and tools (tools/) are never frozen.
package("mpos", base_path="internal_filesystem/lib")
package("aiohttp", base_path="internal_filesystem/lib")
