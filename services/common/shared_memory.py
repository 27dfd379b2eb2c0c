"""System shared-memory regions that callers on this host register (KServe v2's extension).

A caller on the same machine puts a tensor into a POSIX shared-memory object (`shm_open`), and
registers it once under a name; inference requests then name the region instead of carrying
the bytes, and outputs can be written into a region the same way. That skips gRPC's copies
entirely, which over loopback are what limit large tensors (`python -m benchmarks.transport`).

The protocol is Triton's (`SystemSharedMemoryRegister` / `Status` / `Unregister`), so
`tritonclient.utils.shared_memory` works unchanged. Only callers on this host may register:
a key names an object in this machine's /dev/shm, and a remote caller naming one it did not
create would read or overwrite another process's data.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from genaug.addresses import on_this_machine
from genaug.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
)

SHM_ROOT = Path("/dev/shm")  # where glibc's shm_open puts POSIX shared-memory objects
# A key is one name in SHM_ROOT ("/name" or "name", as shm_open takes it): no directories.
_KEY = re.compile(r"/?([A-Za-z0-9_][A-Za-z0-9_.-]{0,254})")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
DEFAULT_MAX_REGIONS = 64  # each holds a mapping; bounded so callers cannot exhaust them


@dataclass(frozen=True)
class Region:
    """A registered window [offset, offset + byte_size) of one shared-memory object."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap = field(repr=False, compare=False)
    fd: int = field(repr=False, compare=False)  # the object's, closed with the last reference

    def __post_init__(self) -> None:
        weakref.finalize(self, os.close, self.fd)

    def view(self, offset: int, byte_size: int, field_name: str) -> memoryview:
        """Bytes [offset, offset + byte_size) of the region (not of the object), bounds-checked."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidArgument(
                field_name,
                f"bytes {offset}..{offset + byte_size} are outside region {self.name!r} "
                f"({self.byte_size} bytes)",
            )
        # Touching a mapped page past the object's end kills the process (SIGBUS), and its
        # owner may have shrunk it since it was registered; a race can still slip past this
        # check, but a caller's mistake is answered instead of crashing the service.
        size = os.fstat(self.fd).st_size
        if size < self.offset + self.byte_size:
            raise InvalidArgument(
                field_name,
                f"the object behind region {self.name!r} ({self.key!r}) was cut to {size} "
                f"bytes after it was registered; register it again",
            )
        start = self.offset + offset
        return memoryview(self.mapping)[start : start + byte_size]


def regions_for(
    registry: SharedMemoryRegistry | None, peer: str, field_name: str
) -> SharedMemoryRegistry:
    """`registry`, for a caller at `peer` (`context.peer()`) of a server that offers it."""
    if registry is None:
        raise Unimplemented(
            f"{field_name}: system shared memory is off on this server (started with "
            "--no-shared-memory); send the tensor's bytes instead"
        )
    if not on_this_machine(peer):
        raise PermissionDenied(
            f"{field_name}: system shared memory is only for callers on the server's host "
            f"(this call comes from {peer}); send the tensor's bytes instead"
        )
    return registry


def _open_key(key: str, offset: int, byte_size: int) -> tuple[mmap.mmap, int]:
    """Map a shared-memory object read-write, with the pages of [offset, offset + byte_size)
    allocated; (mapping, its open descriptor)."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise InvalidArgument(
            "key", f"{key!r} is not a shared-memory key (one name, e.g. '/genaug_input')"
        )
    path = SHM_ROOT / match.group(1)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"key: no shared-memory object {key!r} on this host") from None
    except OSError as error:
        raise InvalidArgument("key", f"cannot open {key!r}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            raise InvalidArgument("key", f"{key!r} is not a non-empty shared-memory object")
        if offset + byte_size > info.st_size:
            raise InvalidArgument(
                "byte_size",
                f"offset {offset} + byte_size {byte_size} is past the end of {key!r} "
                f"({info.st_size} bytes)",
            )
        # A page of a tmpfs that is full is only missing when first touched, and touching it
        # kills the process (SIGBUS): allocate the region's pages now, while that is an error.
        try:
            os.posix_fallocate(fd, offset, byte_size)
        except OSError as error:
            raise ResourceExhausted(
                f"byte_size: no room for {byte_size} bytes of {key!r} in {SHM_ROOT} "
                f"({error.strerror})"
            ) from None
        return mmap.mmap(fd, info.st_size, mmap.MAP_SHARED), fd
    except BaseException:
        os.close(fd)
        raise


class SharedMemoryRegistry:
    """The regions registered with one server, by name; safe to use from every worker thread.

    A region stays mapped while anything still uses a view of it: unregistering only drops
    the name, so a request reading it when it is unregistered still completes."""

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS):
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        if _NAME.fullmatch(name) is None:
            raise InvalidArgument(
                "name", f"{name!r} is not a region name (1-128 of A-Z a-z 0-9 _ . : -)"
            )
        if offset < 0:
            raise InvalidArgument("offset", f"must be >= 0, got {offset}")
        if byte_size <= 0:
            raise InvalidArgument("byte_size", f"must be positive, got {byte_size}")
        with self._lock:
            if name in self._regions:
                raise FailedPrecondition(f"name: region {name!r} is already registered")
            if len(self._regions) >= self.max_regions:
                raise ResourceExhausted(
                    f"name: {self.max_regions} regions are registered already; unregister some"
                )
            mapping, fd = _open_key(key, offset, byte_size)
            region = Region(name, key, offset, byte_size, mapping, fd)
            self._regions[name] = region
            return region

    def unregister(self, name: str = "") -> None:
        """Drop region `name`, or every region when `name` is empty (as Triton does)."""
        with self._lock:
            if name:
                self._regions.pop(name, None)
            else:
                self._regions.clear()

    def status(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            if name not in self._regions:
                raise NotFound(f"name: no shared-memory region {name!r} is registered")
            return [self._regions[name]]

    def region(self, name: str, field_name: str) -> Region:
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise InvalidArgument(field_name, f"no shared-memory region {name!r} is registered")
        return region

    def window(self, region: str, offset: int, byte_size: int, field_name: str) -> memoryview:
        """The bytes a window of a registered region names (errors name `field_name`.*)."""
        found = self.region(region, f"{field_name}.region")
        return found.view(offset, byte_size, f"{field_name}.byte_size")
