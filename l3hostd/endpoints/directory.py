"""The endpoint directory source: endpoint, security-group and group-member files -> model.

Layout (default ``/var/lib/l3hostd/endpoints/``, written by the orchestrator)::

    <dir>/<anything>.yaml|.yml|.json            one endpoint (VM port) per file
    <dir>/security-groups/<name>.yaml|.json     one security group per file
    <dir>/group-members/<group>.yaml|.json      {group: <name>, ips: [...]}: the group's
                                                members on OTHER hypervisors

Names starting with ``.`` or ending in ``.tmp``, ``~`` or ``.swp`` are ignored (editor
backups and the temporary files of atomic writers), and so is anything without one of the
three extensions. File formats: :mod:`l3hostd.endpoints.parse`.

How it works
------------

**State.** For every file the source keeps its last *valid* parse, its current error and
the ``stat`` signature (device, inode, size, mtime, ctime) of what was read. When a file
turns malformed, its previous valid version stays in force and the error is recorded (log,
:attr:`DirectorySource.errors`, :attr:`DirectorySource.parse_errors_total`): an orchestrator
rewriting a file non-atomically, or an operator's typo, must not take a VM off the network.
When a file is deleted, what it defined goes away. Identity is the content, not the file
name: an endpoint is keyed by its ``id``, a group by its ``name:``, a member list by its
``group:``. If two files claim the same key, the one already in force keeps it (at start:
the first by sorted file name) and the other is reported as an error; when the holder goes
away, the other takes over.

**Fast path: inotify** (:mod:`l3hostd.endpoints.inotify`, a small module of ours) on the
directory and on each subdirectory once it exists (they are not created by us; a
subdirectory created later is picked up from the parent's IN_CREATE). An event only names
a file; the source then re-reads that one file and decides by what it
finds (present: parse, absent: remove), so the kind of event hardly matters and a
lost or reordered event cannot leave a wrong state behind. IN_CLOSE_WRITE and IN_MOVED_TO
mean "complete"; a bare IN_CREATE (a hard link or symlink, or a non-atomic writer that has
only just opened the file) is read *tentatively*: if it does not parse yet it is left for the
IN_CLOSE_WRITE that follows, or for the next rescan, without an error being logged.
IN_Q_OVERFLOW, and a watched directory deleted, moved or unmounted, trigger a full rescan.
Events that are already queued are drained and handled as one batch, without any delay
timer, so a burst coalesces by itself and an isolated change is applied at once.

**Safety net: a periodic full rescan** every ``rescan_interval`` seconds (jittered ±10%)
compares each file's ``stat`` signature with what was read and re-reads only what differs;
it also re-adds missing watches. (It cannot see an in-place rewrite of the same size within
one timestamp tick on the same inode: inotify covers that one.) After an overflow the rescan
re-reads every file regardless of signatures.

**Delivery.** After each batch (one inotify drain or one rescan) ``on_change`` is called
once, synchronously, with a :class:`SourceChange` holding the *net* effect of the batch
(a rename that keeps the content, or a rewrite with identical meaning, produces nothing; a
file whose id changed is a removal of the old id and an upsert of the new). It is not called
for an empty batch. :meth:`DirectorySource.load_initial` does *not* call it: the caller
reads :meth:`~DirectorySource.endpoints` and the other accessors once after it, before
writing anything to the kernel. Exceptions raised by ``on_change`` are bugs in the consumer,
not bad input: they propagate out of :meth:`~DirectorySource.run`.

**Remote groups known nowhere.** A rule whose ``remote_group`` is not the name of a
security group, a member list or a group of an endpoint in force matches nothing (the
firewall fails closed); the source reports it on the group's file
(``security-groups/web.yaml: rules[0].remote_group: no security group, member list or
endpoint here is named 'app': the rule matches nothing``) while the group stays in force.
The check runs after a batch that changed a group or the set of known names.

**Directory missing or unreadable.** A missing top directory is created (mode 0o755, and
its parents): the daemon then starts with no endpoints and the orchestrator can write into
it at once. If it disappears later (deleted or moved away), everything it defined goes
away, as for deleted files, and it is re-created. A directory that exists but cannot be
read (EACCES, EIO) keeps the last known state, logs an error and is retried at the next
rescan. If inotify itself is unavailable (instance or watch limits), the source logs an
error and works by rescans alone.

Everything runs on the event loop's thread; file reads are small and local, so they are
done inline (a 5,000-file initial load is a synchronous step before anything is written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from l3hostd.endpoints.inotify import Event, Inotify, Mask, Watch
from l3hostd.endpoints.parse import (
    EndpointFileError,
    GroupMembers,
    parse_endpoint,
    parse_group_members,
    parse_security_group,
)
from l3hostd.model import Endpoint, IPAddress, IPNetwork, SecurityGroup

__all__ = [
    "GROUP_MEMBERS_DIR",
    "SECURITY_GROUPS_DIR",
    "DirectorySource",
    "SourceChange",
    "is_source_name",
]

log = logging.getLogger("l3hostd.endpoints")

SECURITY_GROUPS_DIR: Final = "security-groups"
GROUP_MEMBERS_DIR: Final = "group-members"
SUFFIXES: Final = (".yaml", ".yml", ".json")
IGNORED_SUFFIXES: Final = (".tmp", "~", ".swp")
#: Anything bigger is not an endpoint file (and would stall the loop while parsed).
MAX_FILE_SIZE: Final = 1 << 20
DIRECTORY_MODE: Final = 0o755

_WATCH_MASK: Final = (
    Mask.CLOSE_WRITE
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.DELETE
    | Mask.CREATE
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
#: Events after which a file is complete (or gone) and an error is a real error.
_DEFINITIVE: Final = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE
#: Events saying the watched directory itself is gone: its watch is dead or misleading.
_SELF_GONE: Final = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT | Mask.IGNORED
#: inotify events are at most this many per drain; the kernel queue holds 16384 by default.
_MAX_BATCH: Final = 65536


def is_source_name(name: str) -> bool:
    """True if a file of this name is read (editor and temp files are not)."""
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return name.lower().endswith(SUFFIXES)


@dataclass(slots=True)
class SourceChange:
    """The net effect of one batch of file changes.

    ``endpoints_upserted``: endpoints new or different, by id. ``endpoints_removed``: ids
    gone. ``groups_changed`` / ``members_changed``: names of security groups / remote
    member lists added, changed or removed (look the name up in
    :meth:`DirectorySource.security_groups` / :meth:`~DirectorySource.group_members`:
    absent means removed). ``errors_changed``: the set of files in error changed (for the
    INVALID endpoint state and metrics), even if nothing in force did."""

    endpoints_upserted: dict[str, Endpoint] = field(default_factory=dict)
    endpoints_removed: set[str] = field(default_factory=set)
    groups_changed: set[str] = field(default_factory=set)
    members_changed: set[str] = field(default_factory=set)
    errors_changed: bool = False

    @property
    def is_empty(self) -> bool:
        return not (
            self.endpoints_upserted
            or self.endpoints_removed
            or self.groups_changed
            or self.members_changed
            or self.errors_changed
        )


_Sig = tuple[int, int, int, int, int]
_T = TypeVar("_T")


def _signature(st: os.stat_result) -> _Sig:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Unreadable(Exception):
    """The file exists but cannot be used as is (not regular, too large, EACCES...)."""

    def __init__(self, message: str, sig: _Sig | None) -> None:
        super().__init__(message)
        self.message = message
        self.sig = sig


def _read_file(path: Path) -> tuple[bytes, _Sig]:
    """Read a whole file; its signature is taken *before* reading, so that a write racing
    with the read changes the signature the next rescan sees. FileNotFoundError means the
    file is gone (a dangling symlink counts as gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as exc:
        try:
            sig: _Sig | None = _signature(os.stat(path))
        except OSError:
            sig = None
        raise _Unreadable(f"cannot open: {exc.strerror}", sig) from None
    try:
        st = os.fstat(fd)
        sig = _signature(st)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable("not a regular file", sig)
        if st.st_size > MAX_FILE_SIZE:
            raise _Unreadable(f"file too large ({st.st_size} bytes > {MAX_FILE_SIZE})", sig)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, MAX_FILE_SIZE + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_SIZE:
                raise _Unreadable(f"file too large (> {MAX_FILE_SIZE} bytes)", sig)
        return b"".join(chunks), sig
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror}", None) from None
    finally:
        os.close(fd)


@dataclass(slots=True)
class _FileEntry(Generic[_T]):
    sig: _Sig | None = None  # of the last read, good or bad
    item: _T | None = None  # last valid parse: stays in force while the file is bad
    parse_error: str | None = None
    conflict_error: str | None = None
    reference_error: str | None = None  # a security group naming an unknown remote group

    @property
    def error(self) -> str | None:
        errors = [e for e in (self.parse_error, self.conflict_error, self.reference_error) if e]
        return "; and ".join(errors) if errors else None


class _Collection(Generic[_T]):
    """The files of one kind and the items in force, by key, with ownership of keys.

    ``touched`` remembers, for every key changed during the current batch, its value
    before the batch, so that the batch's net delta can be computed at its end."""

    def __init__(
        self, kind: str, key_field: str, parse: Callable[[bytes, str], _T], key: Callable[[_T], str]
    ) -> None:
        self.kind = kind
        self.key_field = key_field
        self.parse: Callable[[bytes, str], _T] = parse
        self.key: Callable[[_T], str] = key
        self.files: dict[str, _FileEntry[_T]] = {}  # by relative file name
        self.claims: dict[str, set[str]] = {}  # key -> files whose valid item has that key
        self.owner: dict[str, str] = {}  # key -> the file in force
        self.items: dict[str, _T] = {}  # key -> the item in force
        self.touched: dict[str, _T | None] = {}
        self.dirty_files: set[str] = set()  # whose error may have changed in this batch

    def set_item(self, rel: str, item: _T, sig: _Sig) -> None:
        entry = self.files.setdefault(rel, _FileEntry())
        old = entry.item
        entry.sig = sig
        entry.item = item
        entry.parse_error = None
        self.dirty_files.add(rel)
        self._reclaim(rel, old, item)

    def set_error(self, rel: str, message: str, sig: _Sig | None) -> None:
        entry = self.files.setdefault(rel, _FileEntry())
        entry.sig = sig
        entry.parse_error = message
        self.dirty_files.add(rel)

    def remove(self, rel: str) -> None:
        entry = self.files.pop(rel, None)
        if entry is None:
            return
        self.dirty_files.add(rel)
        if entry.item is not None:
            self._reclaim(rel, entry.item, None)

    def _reclaim(self, rel: str, old: _T | None, new: _T | None) -> None:
        keys: list[str] = []
        if old is not None:
            key = self.key(old)
            self.claims.get(key, set()).discard(rel)
            keys.append(key)
        if new is not None:
            key = self.key(new)
            self.claims.setdefault(key, set()).add(rel)
            keys.append(key)
        for key in keys:
            self._settle(key)

    def _settle(self, key: str) -> None:
        self.touched.setdefault(key, self.items.get(key))
        claimants = self.claims.get(key)
        if not claimants:
            self.claims.pop(key, None)
            self.owner.pop(key, None)
            self.items.pop(key, None)
            return
        owner = self.owner.get(key)
        if owner not in claimants:
            owner = min(claimants)  # the first by sorted file name
            self.owner[key] = owner
        item = self.files[owner].item
        assert item is not None
        self.items[key] = item
        for rel in claimants:
            entry = self.files[rel]
            conflict = (
                None
                if rel == owner
                else str(
                    EndpointFileError(
                        rel, self.key_field, f"{self.kind} already defined by {owner}", key
                    )
                )
            )
            if entry.conflict_error != conflict:
                entry.conflict_error = conflict
                self.dirty_files.add(rel)

    def take_delta(self) -> dict[str, _T | None]:
        """The keys whose item in force differs from before the batch, with the new item
        (None: removed). Resets the batch."""
        delta = {
            key: self.items.get(key)
            for key, before in self.touched.items()
            if self.items.get(key) != before
        }
        self.touched.clear()
        return delta


@dataclass(slots=True)
class _Area:
    """One watched directory and the collection its files feed."""

    name: str  # "" for the top directory, else the subdirectory's name
    path: Path
    prefix: str  # prepended to file names for error keys: "" or "security-groups/"
    files: _Collection[Any]

    @property
    def label(self) -> str:
        return self.prefix or "./"


class DirectorySource:
    """Endpoints, security groups and remote group members from a directory of files.

    Call :meth:`load_initial` once (synchronous), read the accessors, then run
    :meth:`run` as a task; ``on_change`` then receives every later change."""

    def __init__(
        self,
        directory: Path,
        on_change: Callable[[SourceChange], None],
        rescan_interval: float = 60.0,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        if rescan_interval <= 0:
            raise ValueError(f"rescan_interval must be > 0, not {rescan_interval}")
        self.directory = Path(directory)
        self._on_change = on_change
        self.rescan_interval = float(rescan_interval)
        allowed = tuple(allowed_networks)
        self._endpoints: _Collection[Endpoint] = _Collection(
            "endpoint", "id", lambda data, name: parse_endpoint(data, name, allowed),
            lambda ep: ep.id,
        )
        self._groups: _Collection[SecurityGroup] = _Collection(
            "security group", "name", parse_security_group, lambda sg: sg.name
        )
        self._members: _Collection[GroupMembers] = _Collection(
            "group member list", "group", parse_group_members, lambda gm: gm.group
        )
        self._top = _Area("", self.directory, "", self._endpoints)
        self._areas: tuple[_Area, ...] = (
            self._top,
            _Area(
                SECURITY_GROUPS_DIR,
                self.directory / SECURITY_GROUPS_DIR,
                f"{SECURITY_GROUPS_DIR}/",
                self._groups,
            ),
            _Area(
                GROUP_MEMBERS_DIR,
                self.directory / GROUP_MEMBERS_DIR,
                f"{GROUP_MEMBERS_DIR}/",
                self._members,
            ),
        )
        self._member_sets: dict[str, frozenset[IPAddress | IPNetwork]] = {}
        # group names the endpoints in force are in (a count per name), and every group
        # name known here at the last remote-group check
        self._endpoint_groups: Counter[str] = Counter()
        self._known_groups: frozenset[str] = frozenset()
        self._errors: dict[str, str] = {}
        self._area_errors: dict[str, str] = {}  # area name -> directory-level error
        self._errors_changed = False
        self._inotify: Inotify | None = None
        self._watches: dict[str, Watch] = {}  # area name -> watch
        self._watch_areas: dict[int, _Area] = {}  # wd -> area
        self._watch_errors: dict[str, str] = {}  # area name -> last add_watch error logged
        self._loaded = False
        #: Failed parses (or reads) of a file, counted each time (metrics).
        self.parse_errors_total = 0
        #: Full rescans after the first load (catch-up at run() start, periodic, overflow,
        #: a watched directory gone).
        self.rescans_total = 0
        #: IN_Q_OVERFLOW events seen.
        self.inotify_overflows_total = 0

    # ---------------------------------------------------------------------- accessors

    def endpoints(self) -> Mapping[str, Endpoint]:
        """Endpoints in force, by id (a live, read-only view)."""
        return MappingProxyType(self._endpoints.items)

    def security_groups(self) -> Mapping[str, SecurityGroup]:
        """Security groups in force, by name (a live, read-only view)."""
        return MappingProxyType(self._groups.items)

    def group_members(self) -> Mapping[str, frozenset[IPAddress | IPNetwork]]:
        """Remote members (other hypervisors) of each group, by group name (live view)."""
        return MappingProxyType(self._member_sets)

    @property
    def errors(self) -> Mapping[str, str]:
        """Current errors, one line each, by file name relative to the directory
        (``tap1.yaml``, ``security-groups/web.yaml``; ``./`` or ``security-groups/`` for a
        directory that cannot be read). A live, read-only view."""
        return MappingProxyType(self._errors)

    def watched(self) -> frozenset[Path]:
        """The directories currently under an inotify watch (diagnostics, tests)."""
        return frozenset(watch.path for watch in self._watches.values())

    def endpoint_file(self, endpoint_id: str) -> str | None:
        """The file (relative name) the endpoint in force comes from."""
        return self._endpoints.owner.get(endpoint_id)

    def endpoint_errors(self) -> dict[str, str]:
        """Endpoints in force whose file is currently in error (their previous valid
        version is what is in force): id -> error line. For the INVALID state."""
        result: dict[str, str] = {}
        for endpoint_id, rel in self._endpoints.owner.items():
            error = self._errors.get(rel)
            if error is not None:
                result[endpoint_id] = error
        return result

    # ---------------------------------------------------------------------- scanning

    def load_initial(self) -> None:
        """Read everything once, synchronously. Does not call ``on_change``: read the
        accessors afterwards."""
        self._full_scan(force=True)
        self._take_change()
        self._loaded = True
        log.info(
            "endpoint directory %s: %d endpoints, %d security groups, %d member lists, "
            "%d files in error",
            self.directory,
            len(self._endpoints.items),
            len(self._groups.items),
            len(self._members.items),
            len(self._errors),
        )

    def rescan(self, force: bool = False) -> None:
        """Full rescan: re-read the files whose ``stat`` signature changed (every file if
        ``force``), drop the vanished ones, re-add missing watches; then ``on_change``."""
        self.rescans_total += 1
        self._full_scan(force)
        self._deliver()

    def _full_scan(self, force: bool) -> None:
        self._ensure_directory()
        self._ensure_watches()
        for area in self._areas:
            self._scan_area(area, force)

    def _ensure_directory(self) -> None:
        if self.directory.is_dir():
            return
        try:
            os.makedirs(self.directory, mode=DIRECTORY_MODE, exist_ok=True)
        except OSError as exc:
            # _scan_area reports it: a missing directory holds no endpoints.
            log.error("cannot create endpoint directory %s: %s", self.directory, exc)
        else:
            log.warning("endpoint directory %s did not exist: created it", self.directory)

    def _scan_area(self, area: _Area, force: bool) -> None:
        try:
            with os.scandir(area.path) as entries:
                names = sorted(e.name for e in entries if is_source_name(e.name))
        except (FileNotFoundError, NotADirectoryError):
            names = []  # a directory that is not there holds nothing
            self._set_area_error(area, None)
        except OSError as exc:
            self._set_area_error(
                area,
                f"{area.label}: cannot read directory {area.path}: {exc.strerror}; "
                "keeping the last known state, retrying at the next rescan",
            )
            return
        else:
            self._set_area_error(area, None)
        present = {area.prefix + name for name in names}
        for rel in [rel for rel in area.files.files if rel not in present]:
            area.files.remove(rel)
        for name in names:
            rel = area.prefix + name
            entry = area.files.files.get(rel)
            if not force and entry is not None and entry.sig is not None:
                try:
                    sig = _signature(os.stat(area.path / name))
                except (FileNotFoundError, NotADirectoryError):
                    area.files.remove(rel)
                    continue
                except OSError:
                    pass  # _refresh records it
                else:
                    if sig == entry.sig:
                        continue
            self._refresh(area, name, tentative=False)

    def _set_area_error(self, area: _Area, error: str | None) -> None:
        old = self._area_errors.get(area.name)
        if error == old:
            return
        self._errors_changed = True
        if error is None:
            del self._area_errors[area.name]
            self._errors.pop(area.label, None)
            log.info("%s: directory readable again", area.label)
        else:
            self._area_errors[area.name] = error
            self._errors[area.label] = error
            log.error("%s", error)

    def _refresh(self, area: _Area, name: str, tentative: bool) -> None:
        """Re-read one file and update its collection. ``tentative``: the file may still
        be being written (bare IN_CREATE): a failure is not recorded yet."""
        rel = area.prefix + name
        files = area.files
        try:
            data, sig = _read_file(area.path / name)
        except FileNotFoundError:
            files.remove(rel)
            return
        except _Unreadable as exc:
            if not tentative:
                self._record_failure(
                    files, rel, str(EndpointFileError(rel, "", exc.message)), exc.sig
                )
            return
        try:
            item = files.parse(data, rel)
        except EndpointFileError as exc:
            if not tentative:
                self._record_failure(files, rel, str(exc), sig)
            return
        entry = files.files.get(rel)
        if (
            files is not self._endpoints
            and (entry is None or entry.item != item)
            and files.key(item) != Path(name).stem
        ):
            log.warning(
                "%s: %s %r differs from the file name; the %s: key is what counts",
                rel,
                files.key_field,
                files.key(item),
                files.key_field,
            )
        files.set_item(rel, item, sig)

    def _record_failure(
        self, files: _Collection[Any], rel: str, message: str, sig: _Sig | None
    ) -> None:
        self.parse_errors_total += 1
        files.set_error(rel, message, sig)

    # ---------------------------------------------------------------------- batches

    def _take_change(self) -> SourceChange:
        """The net change since the last call, with errors and logs brought up to date."""
        change = SourceChange()
        before = dict(self._endpoints.touched)  # the endpoints in force before the batch
        for key, endpoint in self._endpoints.take_delta().items():
            old = before.get(key)
            if old is not None:
                self._endpoint_groups.subtract(old.security_groups)
            if endpoint is None:
                change.endpoints_removed.add(key)
            else:
                change.endpoints_upserted[key] = endpoint
                self._endpoint_groups.update(endpoint.security_groups)
        change.groups_changed.update(self._groups.take_delta())
        for key, members in self._members.take_delta().items():
            change.members_changed.add(key)
            if members is None:
                self._member_sets.pop(key, None)
            else:
                self._member_sets[key] = members.members
        self._check_remote_groups(bool(change.groups_changed))
        for area in self._areas:
            self._update_errors(area.files)
        change.errors_changed = self._errors_changed
        self._errors_changed = False
        return change

    def _check_remote_groups(self, groups_changed: bool) -> None:
        """Report a rule whose remote group is known nowhere here: no security group, no
        member list and no endpoint in force has that name, so the rule matches nothing
        (the firewall fails closed). The group stays in force; the line is on its file.
        Re-checked only when a group or the set of known names changed."""
        known = frozenset(
            {*self._groups.items, *self._member_sets}
            | {name for name, n in self._endpoint_groups.items() if n > 0}
        )
        if known == self._known_groups and not groups_changed:
            return
        self._known_groups = known
        groups = self._groups
        for rel, entry in groups.files.items():
            error = None
            group = entry.item
            if group is not None and groups.owner.get(group.name) == rel:
                for i, rule in enumerate(group.rules):
                    remote = rule.remote_group
                    if remote is not None and remote not in known:
                        error = str(EndpointFileError(
                            rel, f"rules[{i}].remote_group",
                            f"no security group, member list or endpoint here is named "
                            f"{remote!r}: the rule matches nothing", remote,
                        ))  # fmt: skip
                        break
            if entry.reference_error != error:
                entry.reference_error = error
                groups.dirty_files.add(rel)

    def _update_errors(self, files: _Collection[Any]) -> None:
        for rel in sorted(files.dirty_files):
            entry = files.files.get(rel)
            new = entry.error if entry is not None else None
            old = self._errors.get(rel)
            if new == old:
                continue
            self._errors_changed = True
            if new is not None:
                self._errors[rel] = new
                log.warning("%s", new)
            else:
                del self._errors[rel]
                if entry is None:
                    log.info("%s: removed (its error is cleared)", rel)
                else:
                    log.info("%s: valid again", rel)
        files.dirty_files.clear()

    def _deliver(self) -> None:
        change = self._take_change()
        if not change.is_empty:
            self._on_change(change)

    # ---------------------------------------------------------------------- inotify

    async def run(self) -> None:
        """Watch the directory until cancelled. Loads first if :meth:`load_initial` was
        not called. Bad files never raise; ``on_change`` exceptions do."""
        if not self._loaded:
            self.load_initial()
        try:
            inotify = Inotify(cache_size=256)
        except OSError as exc:
            log.error(
                "inotify unavailable (%s): watching %s by rescans every %.0f s only",
                exc,
                self.directory,
                self.rescan_interval,
            )
            await self._rescan_periodically()
            return
        with inotify:
            self._inotify = inotify
            try:
                # Watches first, then a rescan: whatever changed since load_initial (or
                # between two watches being added) is seen by one or the other.
                self.rescan()
                await self._run_tasks(inotify)
            finally:
                self._inotify = None
                self._watches.clear()
                self._watch_areas.clear()

    async def _run_tasks(self, inotify: Inotify) -> None:
        # Two tasks rather than wait_for(inotify.get(), timeout): the rescan keeps its own
        # clock however often events come.
        tasks = [
            asyncio.create_task(self._watch_events(inotify), name="endpoints-inotify"),
            asyncio.create_task(self._rescan_periodically(), name="endpoints-rescan"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _rescan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval * random.uniform(0.9, 1.1))
            log.debug("periodic rescan of %s", self.directory)
            self.rescan()

    async def _watch_events(self, inotify: Inotify) -> None:
        while True:
            events = [await inotify.get()]
            while len(events) < _MAX_BATCH and (event := inotify.sync_get()) is not None:
                events.append(event)
            self._handle_events(events)

    def _ensure_watches(self) -> None:
        """Add the watches that are missing (the top directory first: an IN_CREATE of a
        subdirectory must not be missed)."""
        inotify = self._inotify
        if inotify is None:
            return
        for area in self._areas:
            if area.name in self._watches:
                continue
            if area is not self._top and self._top.name not in self._watches:
                return
            try:
                watch = inotify.add_watch(area.path, _WATCH_MASK)
            except (FileNotFoundError, NotADirectoryError):
                continue  # a subdirectory not created yet: its parent's IN_CREATE tells
            except OSError as exc:
                message = f"cannot watch {area.path}: {exc.strerror}"
                if self._watch_errors.get(area.name) != message:
                    self._watch_errors[area.name] = message
                    log.error("%s; relying on rescans every %.0f s", message, self.rescan_interval)
                continue
            self._watch_errors.pop(area.name, None)
            self._watches[area.name] = watch
            self._watch_areas[watch.wd] = area

    def _drop_watch(self, area: _Area) -> None:
        watch = self._watches.pop(area.name, None)
        if watch is None:
            return
        self._watch_areas.pop(watch.wd, None)
        if self._inotify is not None:
            # A moved directory keeps its watch (on the inode, now elsewhere): remove it.
            # OSError: already gone with the directory.
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(watch)

    def _handle_events(self, events: list[Event]) -> None:
        full = force = False
        rescan_areas: set[str] = set()
        # (area name, file name) -> tentative (only bare IN_CREATEs seen for it)
        dirty: dict[tuple[str, str], bool] = {}
        for event in events:
            mask = event.mask
            if Mask.Q_OVERFLOW in mask:
                self.inotify_overflows_total += 1
                log.warning("inotify queue overflow: full rescan of %s", self.directory)
                full = force = True
                continue
            watch = event.watch
            area = self._watch_areas.get(watch.wd) if watch is not None else None
            if area is None or self._watches.get(area.name) is not watch:
                continue  # a watch already dropped; the rescan that followed covered it
            if mask & _SELF_GONE:
                if area is self._top:
                    log.warning("endpoint directory %s went away: full rescan", self.directory)
                    for each in self._areas:
                        self._drop_watch(each)
                    full = True
                else:
                    self._drop_watch(area)
                    rescan_areas.add(area.name)
                continue
            name = event.name
            if name is None:
                continue
            if Mask.ISDIR in mask:
                if area is self._top and name in (SECURITY_GROUPS_DIR, GROUP_MEMBERS_DIR):
                    if mask & (Mask.MOVED_FROM | Mask.DELETE):
                        # Its watch would follow the moved inode: drop it now, so that a
                        # new directory of that name is watched at once.
                        self._drop_watch(self._area_named(name))
                    rescan_areas.add(name)
                continue
            if not is_source_name(name):
                continue
            tentative = not (mask & _DEFINITIVE)
            key = (area.name, name)
            dirty[key] = dirty.get(key, True) and tentative
        if full:
            self.rescans_total += 1
            self._full_scan(force)
        else:
            if rescan_areas:
                self._ensure_watches()  # before the scan: no change falls in between
                for area_name in sorted(rescan_areas):
                    self._scan_area(self._area_named(area_name), force=False)
            for (area_name, name), tentative in sorted(dirty.items()):
                self._refresh(self._area_named(area_name), name, tentative)
        self._deliver()

    def _area_named(self, name: str) -> _Area:
        return next(area for area in self._areas if area.name == name)
