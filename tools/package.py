"""`make mpy-package`: the library as a mip package of .mpy files, for a board short of heap. Imported from .py
files, a device compiles them in its heap first, which takes several times what the bytecode does (see docs/usage.md);
.mpy bytecode loads as it is, on any MicroPython that reads .mpy version 6 (v1.23 and later).
Serve the folder over HTTP and install with mip.install("http://HOST:PORT/package.json").

    .venv/bin/python tools/package.py build/mpy-package
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.mpy import compile_lib, library_files  # noqa: E402


def write_mpy_package(dest):
    """The .mpy files under dest and a package.json (micropython-lib's format, the repository's version) listing
    them; -> mpy-cross's errors, if any."""
    dest = Path(dest)
    errors = compile_lib(dest, installed_names=True)
    if not errors:
        version = json.loads((ROOT / "package.json").read_text())["version"]
        urls = [[name, name] for name in (str(Path(f).with_suffix(".mpy")) for f in library_files())]
        (dest / "package.json").write_text(json.dumps({"urls": urls, "version": version}, indent=2) + "\n")
    return errors


if __name__ == "__main__":
    problems = write_mpy_package(sys.argv[1])
    if problems:
        sys.exit("\n".join(problems))
