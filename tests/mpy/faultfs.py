# A filesystem whose operations fail on demand, for tests on the unix port: vfs.mount(FaultFS(dir), "/flash") puts a
# real directory at /flash behind it. It can hold at most `cap` bytes (a write past it raises ENOSPC after writing
# what fits, as FAT does), and fail the k-th operation (open, stat, remove, rename, listing, a file's write, read,
# flush or close...) with a chosen errno, once or from then on (a card that went read-only). Never frozen.
import errno
import time
import vfs

ENOSPC = 28  # (MicroPython's errno module has no name for it)

# The operations counted, by name: the filesystem's own and its files'
FS_OPS = ("open", "stat", "remove", "rename", "ilistdir", "mkdir", "rmdir", "statvfs")
FILE_OPS = ("write", "read", "readinto", "readline", "seek", "flush", "close")


class FaultFS:
    def __init__(self, root, cap=None):
        self.root = root.rstrip("/")
        # VfsPosix without a root of its own: with one, rename() builds both paths in one buffer and renames the new
        # name to itself; so the paths are joined here
        self.real = vfs.VfsPosix()
        self.cap = cap  # bytes the files may hold together; None: no limit
        self.rename_over = True  # False: a rename onto an existing file raises EEXIST (FAT without MicroPython's help)
        self.cwd = "/"
        self.count = 0  # operations so far (of the kinds `ops` names, when a fault is set)
        self.fail_at = None  # the operation number that fails
        self.fail_errno = errno.EIO
        self.fail_ops = None  # the kinds counted towards fail_at; None: all
        self.sticky = False  # every counted operation from fail_at on fails
        self.hits = []  # (operation, path, errno) of each fault raised
        self.opened = []  # the files open now
        self.write_ms = 0  # each write takes this long, as a slow flash's do (a sector erased, a block committed)

    def fail(self, at, code=errno.EIO, ops=None, sticky=False):
        # The at-th operation from now (1 for the next) of the kinds in ops (None: any) raises OSError(code)
        self.count, self.fail_at, self.fail_errno, self.fail_ops, self.sticky = 0, at, code, ops, sticky
        self.hits = []

    def check(self, op, path):
        # Counts an operation; raises the fault when it is due
        if self.fail_at is None or (self.fail_ops is not None and op not in self.fail_ops):
            return
        self.count += 1
        if self.count == self.fail_at or (self.sticky and self.count > self.fail_at):
            self.hits.append((op, path, self.fail_errno))
            raise OSError(self.fail_errno)

    def path(self, path):
        # a path on this filesystem -> the real one
        if not path.startswith("/"):
            path = self.cwd.rstrip("/") + "/" + path
        return self.root + path

    def used(self, top=None):
        # bytes the files below top hold
        top = self.root if top is None else top
        total = 0
        for entry in self.real.ilistdir(top):
            full = top + "/" + entry[0]
            if entry[1] == 0x4000:
                total += self.used(full)
            else:
                total += self.real.stat(full)[6]
        return total

    def room(self):
        return 1 << 30 if self.cap is None else max(self.cap - self.used(), 0)

    # -- the VFS methods vfs.mount() and os call --------------------------------------------------------------------

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def full(self, op, path):
        # A refusal for want of room, noted as a fault
        self.hits.append((op, path, ENOSPC))
        return OSError(ENOSPC)

    def open(self, path, mode):
        self.check("open", path)
        if self.room() == 0 and "w" in mode and self.real_size(path) < 0:
            raise self.full("open", path)  # a new file needs a block of its own
        return FaultFile(self, path, self.real.open(self.path(path), mode), "a" in mode)

    def real_size(self, path):
        try:
            return self.real.stat(self.path(path))[6]
        except OSError:
            return -1

    def stat(self, path):
        self.check("stat", path)
        return self.real.stat(self.path(path))

    def remove(self, path):
        self.check("remove", path)
        self.real.remove(self.path(path))

    def rename(self, old, new):
        self.check("rename", old)
        if self.room() == 0:
            raise self.full("rename", old)  # littlefs commits a rename to a metadata block it may have no room for
        if not self.rename_over and self.real_size(new) >= 0:
            raise OSError(errno.EEXIST)
        self.real.rename(self.path(old), self.path(new))

    def ilistdir(self, path):
        self.check("ilistdir", path)
        return self.real.ilistdir(self.path(path))

    def mkdir(self, path):
        self.check("mkdir", path)
        self.real.mkdir(self.path(path))

    def rmdir(self, path):
        self.check("rmdir", path)
        self.real.rmdir(self.path(path))

    def chdir(self, path):
        full = self.path(path)
        if self.real.stat(full)[0] & 0x4000 == 0:
            raise OSError(errno.ENOTDIR)
        self.cwd = full[len(self.root):] or "/"

    def getcwd(self):
        return self.cwd

    def statvfs(self, path):
        self.check("statvfs", path)
        blocks = (self.cap or 1 << 30) // 512
        free = self.room() // 512
        return (512, 512, blocks, free, free, 0, 0, 0, 0, 255)


class FaultFile:
    def __init__(self, fs, path, real, append):
        self.fs = fs
        self.name = path
        self.real = real
        self.append = append
        fs.opened.append(self)

    def write(self, data):
        fs = self.fs
        fs.check("write", self.name)
        if fs.write_ms:
            time.sleep_ms(fs.write_ms)
        if fs.cap is not None:
            end = fs.real_size(self.name)
            here = end if self.append else self.real.tell()
            # bytes that land past the file's end take room (a hole before them too); those over its old bytes do not
            fits = max(fs.room() + end - here, 0)
            if len(data) > fits:
                if fits:
                    self.real.write(data[:fits])
                raise fs.full("write", self.name)
        return self.real.write(data)

    def read(self, *size):
        self.fs.check("read", self.name)
        return self.real.read(*size)

    def readinto(self, buf, *size):
        self.fs.check("readinto", self.name)
        return self.real.readinto(buf, *size)

    def readline(self):
        self.fs.check("readline", self.name)
        return self.real.readline()

    def seek(self, *where):
        self.fs.check("seek", self.name)
        return self.real.seek(*where)

    def tell(self):
        return self.real.tell()

    def flush(self):
        self.fs.check("flush", self.name)
        return self.real.flush()

    def close(self):
        # A failed close still closes, as littlefs's does: the handle is gone either way
        if self in self.fs.opened:
            self.fs.opened.remove(self)
            try:
                self.fs.check("close", self.name)
            finally:
                self.real.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
