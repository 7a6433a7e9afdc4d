# OUTFILE.part, where a file-mode download writes until its body is complete, and its record OUTFILE.part.state:
# a small JSON object with the URL's identity (a hash: URLs may carry keys), the resource's validator (ETag or
# Last-Modified, key "v") and size, and for a segmented download the ranges still missing ("todo"). A resume sends
# If-Range with the validator, so a resource that changed starts over.
# Plain file operations: what fails raises the OSError the filesystem gave.
import os
from micropython import const

_RECORD_MOST = const(16384)  # bytes: ours name a few dozen ranges at most, each under 30 bytes


def size_of(path):
    # bytes in the file at path; -1 when there is none. A filesystem that can't tell raises: a .part it failed to
    # stat is no absent one (taken for one, a resume would fetch a range literally into a fresh file)
    try:
        return os.stat(path)[6]
    except OSError as e:
        import errno  # (here, not at the top: every name in this module's dict takes a slot of heap)

        if e.errno != errno.ENOENT:
            raise
        return -1


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def replace(src, dst):
    try:
        os.rename(src, dst)
    except OSError as e:  # some filesystems (FAT) won't rename over an existing file; any other failure keeps dst
        import errno

        if e.errno != errno.EEXIST:
            raise
        remove(dst)
        os.rename(src, dst)


def canonical(path):
    # The one spelling of a path: absolute, without "." or ".." or doubled slashes ("a.bin", "./a.bin" and
    # "/cwd/a.bin" name one file, and so one .part)
    if not path.startswith("/"):
        path = os.getcwd() + "/" + path
    names = []
    for name in path.split("/"):
        if name == "..":
            if names:
                names.pop()
        elif name and name != ".":
            names.append(name)
    return "/" + "/".join(names)


def share_a_file(path, other):
    # -> whether downloads to these two canonical paths write one file: a download to X writes X, X.part and
    # X.part.state
    if len(path) > len(other):
        path, other = other, path
    return other in (path, path + ".part", path + ".part.state")


def each_block(path, block_size, take):
    # take(block) for the file's content, one block_size buffer at a time
    with open(path, "rb") as f:
        buf = bytearray(block_size)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            take(buf if n == block_size else view[:n])


def url_key(url):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(url.encode()).digest()[:8]).decode()


def read_record(part):
    # -> the record of `part`: {} when there is none, None when it can't be read (then nothing is vouched for)
    path = part + ".state"
    n = size_of(path)
    if n < 0:
        return {}
    if n > _RECORD_MOST:
        return None  # not one of ours, and no heap need hold it to tell
    try:
        import json

        with open(path) as f:
            record = json.loads(f.read())
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def write_record(part, record):
    # Written aside and renamed, so a kill leaves the old record or the new one, never half of one
    import json

    path = part + ".state"
    try:
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(record))
        replace(path + ".tmp", path)
    except OSError:
        remove(path + ".tmp")
        raise


def get_resume_position(outfile):
    """Bytes of partial data a Range request could continue from: OUTFILE.part if a failed download left
    one, else OUTFILE itself (a file written by an older version or by the app); 0 if neither exists."""
    part = outfile + ".part"
    try:
        n = size_of(part)
        if n > 0:
            record = read_record(part)
            if record is None or "todo" in record:
                return 0  # a segmented partial (segments=) has holes: only segments= resumes it, by its record
        if n < 0:
            n = size_of(outfile)
    except OSError:
        return 0  # the filesystem can't tell: from the start is always right
    return max(n, 0)
