# How MicroPythonOS's own modules call DownloadManager (MicroPythonOS/MicroPythonOS at 7723a734), restated for
# tests/test_os_modules.py: the same calls, keywords, callback shapes and error handling around them. What they drive
# on a device (the flash partition, Wi-Fi, the screen) is replaced by stand-ins a test can read back.
import json
import os
import struct

from mpos import DownloadManager, TaskManager

_BLOCK = 4096  # the OS updater writes the firmware in flash blocks of this size
UI_PAUSE_MS = 1  # the updater's progress callback gives the screen 50 ms to draw; the tests draw nothing


# --- builtin/apps/com.micropythonos.osupdate/osupdate_core.py ------------------------------------------------------


class FlashPartition:
    """esp32.Partition as the updater writes to it: whole blocks by index. fail = {index: exception}: the write of
    that block raises it, once."""

    def __init__(self, fail=None):
        self.blocks = {}
        self.fail = dict(fail or {})

    def writeblocks(self, index, block):
        error = self.fail.pop(index, None)
        if error is not None:
            raise error
        if len(block) != _BLOCK:
            raise ValueError("a %d-byte block" % len(block))
        self.blocks[index] = bytes(block)

    def written(self):
        # -> (sha256 hex of blocks 0, 1, ... in order, the indexes below the highest one that were never written)
        import binascii
        import hashlib

        last = max(self.blocks) if self.blocks else -1
        h = hashlib.sha256()
        holes = []
        for index in range(last + 1):
            if index in self.blocks:
                h.update(self.blocks[index])
            else:
                holes.append(index)
        return binascii.hexlify(h.digest()).decode(), holes


class UpdateScreen:
    """osupdate.py's progress and speed callbacks: async, as the updater passes them, noting what they were given."""

    def __init__(self):
        self.percents = []
        self.speeds = []

    async def progress(self, percent):
        self.percents.append(percent)
        await TaskManager.sleep_ms(UI_PAUSE_MS)

    async def speed(self, bytes_per_second):
        self.speeds.append(bytes_per_second)


class UpdateDownloader:
    """UpdateDownloader.download_and_install: the firmware streams through chunk_callback into flash blocks (the last
    one padded with erased flash); a network error pauses the update and the next call asks for the rest with Range
    from bytes_written_so_far, the bytes of the unfinished block dropped. options: keywords added to upstream's
    download_url call (docs/decisions.md tells the updater to add raise_errors=True)."""

    def __init__(self, partition, is_online=lambda: True, **options):
        self.partition = partition
        self.is_online = is_online  # ConnectivityManager's answer
        self.options = options
        self.bytes_written_so_far = 0
        self.pending = b""  # the next block's first bytes
        self.cancel_error = None  # what the chunk callback raised to cancel
        self.caught = None  # what download_and_install caught (upstream only logs it)

    async def _take(self, chunk):
        if not self.is_online():
            raise OSError(-113, "Network lost during download")
        self.pending += chunk
        while len(self.pending) >= _BLOCK:
            block, self.pending = self.pending[:_BLOCK], self.pending[_BLOCK:]
            self.partition.writeblocks(self.bytes_written_so_far // _BLOCK, block)
            self.bytes_written_so_far += _BLOCK

    async def download_and_install(self, url, progress_callback=None, speed_callback=None,
                                   should_continue_callback=None):
        result = {"success": False, "bytes_written": 0, "error": None, "paused": False}
        headers = None
        if self.bytes_written_so_far:
            headers = {"Range": "bytes=%d-" % self.bytes_written_so_far}

        async def chunk_handler(chunk):
            if should_continue_callback and not should_continue_callback():
                self.cancel_error = Exception("Download cancelled by user")
                raise self.cancel_error
            await self._take(chunk)

        try:
            ok = await DownloadManager.download_url(url, chunk_callback=chunk_handler,
                                                    progress_callback=progress_callback,
                                                    speed_callback=speed_callback, headers=headers, **self.options)
            if ok:
                if self.pending:
                    padded = self.pending + b"\xff" * (_BLOCK - len(self.pending))
                    self.partition.writeblocks(self.bytes_written_so_far // _BLOCK, padded)
                    self.bytes_written_so_far += _BLOCK
                    self.pending = b""
                result["success"] = True
                result["bytes_written"] = self.bytes_written_so_far
                if progress_callback:
                    await progress_callback(100.0)
                self.bytes_written_so_far = 0
            else:
                result["error"] = "Download failed"
        except Exception as e:
            self.caught = e
            if "cancelled" in str(e).lower():
                result["error"] = str(e)
            elif DownloadManager.is_network_error(e):
                self.pending = b""  # asked for again by the next call's Range
                result["paused"] = True
            else:
                result["error"] = str(e)
        if not result["success"]:
            result["bytes_written"] = self.bytes_written_so_far
        return result


async def fetch_update_info(url, **options):
    """UpdateChecker.fetch_update_info: the update's JSON, ValueError when it is no such JSON; whatever the download
    raised passes through. options: as UpdateDownloader's."""
    data = await DownloadManager.download_url(url, **options)
    try:
        info = json.loads(data)
    except Exception as e:
        raise ValueError("Invalid JSON in update file: %s" % e)
    missing = [field for field in ("version", "download_url", "changelog") if field not in info]
    if missing:
        raise ValueError("Update file missing required fields: " + ", ".join(missing))
    return info


async def check_for_update(url, **options):
    """UpdateManager.check_for_update's verdict -> "found", "error" or "waiting_wifi" (a network error, Wi-Fi down)."""
    try:
        await fetch_update_info(url, **options)
        return "found"
    except (ValueError, RuntimeError):
        return "error"
    except Exception as e:
        return "waiting_wifi" if DownloadManager.is_network_error(e) else "error"


# --- builtin/apps/com.micropythonos.appstore/ (appstore.py, app_detail.py, appstore_core.py) ---------------------


async def fetch_index(url):
    """AppStore.download_app_index: the store's index, or None (the installed apps alone are shown)."""
    try:
        response = await DownloadManager.download_url(url)
    except Exception:
        return None
    try:
        return json.loads(response)
    except Exception:
        return None


class StoreApp:
    icon_data = None
    failure = None  # what the icon download raised (the App Store swallows it)

    def __init__(self, icon_url):
        self.icon_url = icon_url


async def download_icon(app):
    """AppStore._do_download and AppDetail._download_icon: five seconds at most, else the placeholder stays."""
    try:
        app.icon_data = await TaskManager.wait_for(DownloadManager.download_url(app.icon_url), 5)
    except Exception as e:
        app.failure = e


async def report_install(api, fullname, revision, mac, device_id):
    """appstore_core.report_badgehub_install, with BadgeHub's API at `api`."""
    url = "%s/projects/%s/rev%s/report/install?mac=%s&id=%s" % (api, fullname, revision, mac, device_id)
    try:
        await DownloadManager.post_url(url, data=b"", headers={"Accept": "application/json"}, redact_url=True)
    except Exception:
        pass


async def report_rating(api, fullname, revision, mac, device_id, rating):
    """appstore_core.report_badgehub_rating, with BadgeHub's API at `api`."""
    url = "%s/projects/%s/rev%s/report/rating?mac=%s&id=%s" % (api, fullname, revision, mac, device_id)
    try:
        await DownloadManager.post_url(url, data=json.dumps({"rating": rating}),
                                       headers={"Accept": "application/json", "Content-Type": "application/json"},
                                       redact_url=True)
    except Exception:
        pass


async def fetch_project_details(url):
    """appstore_core.fetch_badgehub_project_details: a BadgeHub project's JSON boiled down to what AppDetail shows
    and installs from ({} when the download raised or its answer is no JSON): version, publisher, revision and the
    .mpk's URL and size (the installer's download_url_size)."""
    try:
        body = await DownloadManager.download_url(url)
    except Exception:
        return {}
    try:
        project = json.loads(body)
    except Exception:
        return {}
    version = project.get("version") or {}
    meta = version.get("app_metadata") or {}
    details = {"version": meta.get("version"), "publisher": meta.get("author"), "revision": version.get("revision")}
    for entry in version.get("files") or ():
        if str(entry.get("ext", "")).lower() in (".mpk", ".zip"):
            details["download_url"], details["download_url_size"] = entry.get("url"), entry.get("size_of_content")
            break
    return details


async def check_app_updates(url, installed_versions, **options):
    """appstore_core.AppUpdateManager.check_for_updates on BadgeHub's index -> (state, the slugs with a newer
    version than installed_versions says): "updates_available", "no_updates", "error", or "waiting_wifi" when the
    download raised a network error. options: as UpdateDownloader's."""
    try:
        body = await DownloadManager.download_url(url, **options)
    except Exception as e:
        return ("waiting_wifi" if DownloadManager.is_network_error(e) else "error"), []
    try:
        index = json.loads(body)  # (None, the documented failure, is no JSON either)
    except Exception:
        return "error", []
    def numbers(version):
        return [int(part) for part in version.split(".")]

    newer = [entry["slug"] for entry in index if entry.get("slug") in installed_versions
             and numbers(entry.get("version", "0")) > numbers(installed_versions[entry["slug"]])]
    return ("updates_available" if newer else "no_updates"), newer


def install_label(error):
    """AppDetail.download_and_install: what the install button's label says after the installer raised error."""
    if DownloadManager.is_network_error(error):
        return "Network error - check WiFi"
    if "Not enough free space" in str(error):
        return "Not enough space"
    return "Download failed: " + str(error)[:30]


# --- apps/cz.ucw.pavel.weather/main.py -----------------------------------------------------------------------------


def forecast_query(latitude, longitude):
    # open-meteo's query as the app writes it: commas and all, not percent-encoded
    return ("?latitude={}&longitude={}&current=temperature_2m,weather_code,wind_speed_10m"
            "&hourly=temperature_2m,precipitation&forecast_days=10&timezone=auto").format(latitude, longitude)


async def fetch_weather(endpoint, latitude, longitude):
    """The weather app's fetch: open-meteo's forecast (endpoint: its /v1/forecast) in memory mode, the JSON parsed;
    the summary it shows ("Download error" for the documented None)."""
    data = await DownloadManager.download_url(endpoint + forecast_query(latitude, longitude))
    if not data:
        return "Download error"
    forecast = json.loads(data)
    return "%s C, %d hours ahead" % (forecast["current"]["temperature_2m"], len(forecast["hourly"]["time"]))


# --- lib/mpos/content/app_manager.py and streaming_unzip.py -------------------------------------------------------

_LOCAL_HEADER = "<IHHHHHIIIHH"  # signature, version, flags, method, time, date, crc32, packed size, size, name, extra
_LOCAL_HEADER_SIZE = 30
_LOCAL_SIGNATURE = 0x04034B50
_STORED = 0
_DEFLATED = 8
_SIZES_AFTER_DATA = 0x08  # a flag bit: the sizes follow the data, so a stream can't be cut into members


class StreamingUnzip:
    """What streaming_unzip.StreamingUnzip does with the chunks app_manager hands it: a .mpk (a ZIP whose first entry
    is the app's one top-level folder) unpacked as its bytes arrive, stored members written as they come, deflated
    ones inflated once complete, each checked against its CRC-32. The central directory at the end is ignored."""

    def __init__(self, dest, top, free_bytes=None):
        self.dest = dest
        self.top = top
        self.free_bytes = free_bytes  # app_manager's free_space_limit: a member larger than this raises
        self.buf = b""
        self.started = False  # the top-level folder was seen
        self.ended = False  # past the last member
        self.out = None  # the member being written: [file, bytes still to come, method, crc32, crc so far, packed]

    def feed(self, data):
        if self.ended:
            return
        self.buf += data
        while self.buf and (self._member_data() if self.out else self._local_header()):
            pass

    def finish(self):
        if self.out is not None:
            self.out[0].close()
            raise RuntimeError("the archive ends inside a member")

    def _local_header(self):
        if len(self.buf) < _LOCAL_HEADER_SIZE:
            return False
        signature, _, flags, method, _, _, crc, packed, size, name_len, extra_len = struct.unpack(
            _LOCAL_HEADER, self.buf[:_LOCAL_HEADER_SIZE])
        if signature != _LOCAL_SIGNATURE:
            if not self.started:
                raise RuntimeError("not a .mpk archive")
            self.ended = True
            self.buf = b""
            return False
        end = _LOCAL_HEADER_SIZE + name_len + extra_len
        if len(self.buf) < end:
            return False
        name = self.buf[_LOCAL_HEADER_SIZE : _LOCAL_HEADER_SIZE + name_len].decode()
        self.buf = self.buf[end:]
        if flags & _SIZES_AFTER_DATA or method not in (_STORED, _DEFLATED):
            raise RuntimeError("%s: member format not supported" % name)
        if not self.started:
            if name != self.top + "/":
                raise RuntimeError("first entry %s is not the app's folder %s/" % (name, self.top))
            self.started = True
            _make_dirs(self.dest)
            return True
        if not name.startswith(self.top + "/") or ".." in name.split("/"):
            raise RuntimeError("entry %s is outside %s/" % (name, self.top))
        path = self.dest + "/" + name[len(self.top) + 1 :]
        if name.endswith("/"):
            _make_dirs(path)
            return True
        if self.free_bytes is not None and size > self.free_bytes:
            raise RuntimeError("Not enough free space (%d KB available, %d KB needed)" % (
                self.free_bytes // 1024, size // 1024))
        _make_dirs(path[: path.rfind("/")])
        self.out = [open(path, "wb"), packed, method, crc, 0, b""]
        if not packed:
            self._close_member()
        return True

    def _member_data(self):
        import binascii

        out = self.out
        piece, self.buf = self.buf[: out[1]], self.buf[out[1] :]
        out[1] -= len(piece)
        if out[2] == _STORED:
            out[0].write(piece)
            out[4] = binascii.crc32(piece, out[4])
        else:
            out[5] += piece
        if not out[1]:
            if out[2] == _DEFLATED:
                data = _inflate(out[5])
                out[0].write(data)
                out[4] = binascii.crc32(data)
            self._close_member()
        return True

    def _close_member(self):
        out, self.out = self.out, None
        out[0].close()
        if out[3] != out[4] & 0xFFFFFFFF:
            raise RuntimeError("CRC mismatch")


def _inflate(packed):
    import deflate
    import io

    with deflate.DeflateIO(io.BytesIO(packed), deflate.RAW, 15) as stream:
        return stream.read()


def _make_dirs(path):
    so_far = ""
    for part in path.split("/"):
        so_far = so_far + "/" + part if so_far else part
        try:
            os.mkdir(so_far)
        except OSError:
            pass


def remove_tree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for entry in entries:
        remove_tree(path + "/" + entry[0])
    os.rmdir(path)


async def download_and_install_package(download_url, fullname, download_url_size=None, progress_callback=None,
                                       free_bytes=None):
    """AppManager.download_and_install_package: the .mpk unpacked into apps/<fullname> while it downloads, no
    temporary file; True, or RuntimeError with the folder removed. free_bytes: what the flash has room for."""
    dest = "apps/" + fullname
    remove_tree(dest)
    extractor = StreamingUnzip(dest, fullname, free_bytes)

    async def _chunk_callback(chunk):
        extractor.feed(chunk)

    try:
        result = await DownloadManager.download_url(download_url, chunk_callback=_chunk_callback,
                                                    total_size=download_url_size, progress_callback=progress_callback)
    except Exception as e:
        remove_tree(dest)
        raise RuntimeError("Download failed for %s: %s" % (fullname, e))
    if result is not True:
        remove_tree(dest)
        raise RuntimeError("Download failed for %s" % fullname)
    try:
        extractor.finish()
    except Exception as e:
        remove_tree(dest)
        raise RuntimeError("Download failed for %s: %s" % (fullname, e))
    return True


def installed(folder):
    """{path inside folder: sha256 hex} of every file under it."""
    from testlib import sha256_file

    found = {}
    for entry in os.ilistdir(folder):
        path = folder + "/" + entry[0]
        if entry[1] == 0x4000:
            for inner, sha in installed(path).items():
                found[entry[0] + "/" + inner] = sha
        else:
            found[entry[0]] = sha256_file(path)
    return found


# --- the clocks, moved on instead of waited for ---------------------------------------------------------------------


def skip_event_loop_time(ms):
    """Move the event loop's clock `ms` ahead: sleeps and TaskManager.wait_for timeouts end that much sooner (the
    sockets' own timeouts, on their own clock, do not)."""
    from asyncio import core
    from time import ticks_add

    real = getattr(core, "_real_ticks", core.ticks)
    ahead = getattr(core, "_ahead", 0) + ms
    core._real_ticks, core._ahead = real, ahead
    core.ticks = lambda: ticks_add(real(), ahead)


def download_clock_runs(step_ms):
    """DownloadManager's clock (speed reports) moves step_ms each time it is read: a speed_callback fires within a
    few chunks instead of after a second."""
    import mpos.net.download as module

    now = [0]

    def ticks():
        now[0] += step_ms
        return now[0]

    module.ticks_ms = ticks
