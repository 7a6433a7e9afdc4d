# An ESP32 firmware with the library frozen in:
#   make -C ports/esp32 BOARD=ESP32_GENERIC_S3 FROZEN_MANIFEST=/path/to/manifests/esp32.py
# The port's set for its generic boards comes first, so asyncio and the rest stay.
include("$(PORT_DIR)/boards/manifest.py")
include("../manifest.py")
