# The unix port (MicroPythonOS's desktop simulator) with the library frozen in; `make frozen` builds it:
#   make -C ports/unix MICROPY_PY_FFI=0 FROZEN_MANIFEST=/path/to/manifests/unix.py
# The standard variant's set comes first, so asyncio, mip and the rest stay.
include("$(PORT_DIR)/variants/standard/manifest.py")
include("../manifest.py")
