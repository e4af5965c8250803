"""Reconcilers: desired vs observed state of one kind of kernel object, and the delta between.

Felix's dataplane doctrine and BIRD's krt.c, in one small generic class:

* ``set_desired(key, value)`` is cheap and does no IO: it records the wish and marks the
  key dirty when it differs from what was last observed in the kernel.
* ``apply(phase)`` is the only method doing IO. It writes only dirty keys, in one batch,
  and records the outcome as the new observed state. A second apply with nothing dirty
  writes nothing.
* ``resync()`` re-reads every object *we own* from the kernel (mark-and-sweep): everything
  becomes dirty, so objects that are right are left alone, objects that differ are fixed,
  and objects that are ours but no longer desired are deleted. Objects that are not ours
  are never part of ``observed`` and therefore never touched. A reconciler starts with a
  resync pending, so nothing is written before the first full read of the kernel.
* Removals and additions run in separate phases so that the daemon can order them across
  reconcilers (add: firewall, tap config, neighbours, routes; remove: the reverse).
* A key that fails stays dirty and is retried with exponential backoff (0.1 s .. 30 s).

Subclasses implement ``_dump`` (read our objects from the kernel) and ``_write`` (apply
deletes then adds in one batch, returning an errno per request). A subclass that needs the
observed objects of one device (a device that went down lost them all in the kernel)
sets ``_by_group`` to a dict and ``_group`` to the device of an object: the index is kept
with every change of ``observed``, and :meth:`observed_in` costs what it returns, not a
scan of every object (2,000 routes on a host with 1,000 VMs, at every TAP going down).
"""

from __future__ import annotations

import abc
import enum
import errno
import logging
import time
from collections.abc import Hashable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from l3hostd.metrics_hist import APPLY_BUCKETS, Histogram

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("l3hostd.reconcile")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0

#: errnos that mean "already gone" for a delete: not an error.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})

#: A write to a device that no longer exists. A TAP that is deleted goes down first, and
#: what a down TAP keeps (neighbour entries, its configuration) is written again at that
#: event, often just after the kernel removed the device: routine, so a first failure is
#: neither logged as a warning nor counted as an error. The device's own removal event
#: takes the wish away; a failure that lasts is counted from its second attempt on and
#: logged as a warning at the fifth, as any failure.
DEVICE_GONE_ERRNOS = frozenset({errno.ENODEV})


class Phase(enum.Enum):
    REMOVE = "remove"
    ADD = "add"


@dataclass(slots=True)
class ReconcilerStats:
    applies: int = 0
    writes: int = 0
    errors: int = 0
    resyncs: int = 0
    last_apply_seconds: float = 0.0
    last_error: str = ""
    #: duration of every apply that wrote something (one batch), for the metrics
    apply_seconds: Histogram = field(default_factory=lambda: Histogram(APPLY_BUCKETS))

    def observe_apply(self, seconds: float) -> None:
        self.last_apply_seconds = seconds
        self.apply_seconds.observe(seconds)


@dataclass(slots=True)
class _Retry:
    attempts: int
    not_before: float


class Reconciler(abc.ABC, Generic[K, V]):
    """Desired vs observed for one object kind; see the module docstring."""

    name: str = "reconciler"

    #: At most this many writes per :meth:`apply` call; the rest stays dirty for the next
    #: pass (bounds the memory of a batch and lets other work interleave with a bulk load).
    max_batch = 8192

    def __init__(self) -> None:
        self.desired: MutableMapping[K, V] = {}
        self.observed: MutableMapping[K, V] = {}
        # Dirty keys, split by what they may need, so that a phase scans only its own:
        self._dirty_add: set[K] = set()  # desired: may need an add or a change
        self._dirty_rm: set[K] = set()  # not desired: may need a delete
        self._retry: dict[K, _Retry] = {}
        self._resync_pending = True
        self._resync_not_before = 0.0
        self._resync_failures = 0
        self.in_sync = False  # True after the first successful resync
        self._observed_changed: set[K] = set()
        #: Record observed changes for take_observed_changes() (off: nobody asks; it would
        #: only grow).
        self.track_changes = False
        #: Change an object with one "replace" write instead of delete + add (no gap).
        self.replace_in_place = False
        #: Do not delete objects that are ours but not desired (graceful-restart hold).
        self.protect_unwanted = False
        self.stats = ReconcilerStats()
        #: observed keys by :meth:`_group` of their value; None: not indexed
        self._by_group: dict[Hashable, set[K]] | None = None

    # ---- cheap, no IO -------------------------------------------------------------------

    def set_desired(self, key: K, value: V | None) -> None:
        old = self.desired.get(key)
        if value is None:
            if old is None:
                return
            del self.desired[key]
            self._dirty_add.discard(key)
            self._dirty_rm.add(key)
        else:
            if old == value:
                return
            self.desired[key] = value
            self._dirty_rm.discard(key)
            self._dirty_add.add(key)
        self._retry.pop(key, None)
        self._changed(key)  # (what is announced depends on the wish too: see Dataplane)

    def _mark(self, key: K) -> None:
        if key in self.desired:
            self._dirty_add.add(key)
        else:
            self._dirty_rm.add(key)

    def forget_observed(self, keys: Iterable[K]) -> None:
        """The kernel removed these objects without telling (e.g. a device went down):
        drop them from observed so that they are re-created when desired again."""
        for key in keys:
            if self._unobserve(key) is not None:
                self._mark(key)
                self._changed(key)

    def observed_in(self, group: Hashable) -> list[K]:
        """The observed keys whose value is in ``group`` (needs the index: see the module
        docstring)."""
        assert self._by_group is not None, f"{self.name}: observed objects are not indexed"
        return list(self._by_group.get(group, ()))

    # ---- observed, with its index ---------------------------------------------------------

    def _observe(self, key: K, value: V) -> None:
        index = self._by_group
        if index is not None:
            old = self.observed.get(key)
            if old is not None:
                self._unindex(index, key, old)
            index.setdefault(self._group(key, value), set()).add(key)
        self.observed[key] = value

    def _unobserve(self, key: K) -> V | None:
        old = self.observed.pop(key, None)
        if old is not None and self._by_group is not None:
            self._unindex(self._by_group, key, old)
        return old

    def _unindex(self, index: dict[Hashable, set[K]], key: K, value: V) -> None:
        group = self._group(key, value)
        keys = index.get(group)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[group]

    def _reindex(self) -> None:
        if self._by_group is not None:
            index: dict[Hashable, set[K]] = {}
            for key, value in self.observed.items():
                index.setdefault(self._group(key, value), set()).add(key)
            self._by_group = index

    def queue_resync(self) -> None:
        self._resync_pending = True

    def resync_due(self, now: float) -> bool:
        return now >= self._resync_not_before

    def resync_failed(self, now: float, exc: BaseException) -> None:
        """Reading the kernel failed (or an apply blew up): try again with backoff."""
        self._resync_failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self._resync_failures, 10))
        self._resync_not_before = now + delay
        self._resync_pending = True
        self.stats.errors += 1
        self.stats.last_error = f"resync: {exc}"[:500]
        log.warning("%s: %s; retrying in %.1fs", self.name, self.stats.last_error, delay)

    def release_protection(self) -> None:
        """End a graceful-restart hold: sweep what is ours and not desired."""
        if self.protect_unwanted:
            self.protect_unwanted = False
            self._dirty_rm.update(k for k in self.observed if k not in self.desired)

    @property
    def resync_pending(self) -> bool:
        return self._resync_pending

    def pending(self, now: float) -> bool:
        """Is there work that may be done now?"""
        if self._resync_pending:
            return now >= self._resync_not_before
        if not self.in_sync:
            return False
        if not self._retry:
            return bool(self._dirty_add or self._dirty_rm)
        retry = self._retry
        return any(
            k not in retry or retry[k].not_before <= now
            for dirty in (self._dirty_add, self._dirty_rm)
            for k in dirty
        )

    def next_retry(self) -> float | None:
        """Earliest deadline of a key (or of a failed resync) waiting for its backoff."""
        deadlines = [r.not_before for r in self._retry.values()]
        if self._resync_pending and self._resync_not_before:
            deadlines.append(self._resync_not_before)
        return min(deadlines) if deadlines else None

    def take_observed_changes(self) -> set[K]:
        """Keys whose observed (installed) value or whose wish changed since the last
        call (needs :attr:`track_changes`)."""
        changed, self._observed_changed = self._observed_changed, set()
        return changed

    def peek_observed_changes(self) -> set[K]:
        """What :meth:`take_observed_changes` would return now (the set itself: do not
        change it)."""
        return self._observed_changed

    def _changed(self, key: K) -> None:
        if self.track_changes:
            self._observed_changed.add(key)

    def has_dirty(self, phase: Phase) -> bool:
        """Are there keys an :meth:`apply` of ``phase`` would look at?"""
        return bool(self._dirty_rm if phase is Phase.REMOVE else self._dirty_add)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty_add) + len(self._dirty_rm)

    # ---- IO --------------------------------------------------------------------------------

    async def resync(self) -> None:
        """Mark-and-sweep: re-read what we own; every key is then dirty."""
        observed = await self._dump()
        if self.track_changes:
            old = self.observed
            self._observed_changed.update(k for k, v in old.items() if observed.get(k) != v)
            self._observed_changed.update(k for k, v in observed.items() if old.get(k) != v)
        self.observed = observed
        self._reindex()
        self._dirty_add.update(self.desired)
        self._dirty_rm.update(k for k in observed if k not in self.desired)
        self._resync_pending = False
        self._resync_failures = 0
        self.in_sync = True
        self.stats.resyncs += 1

    async def apply(self, phase: Phase, now: float) -> int:
        """Write (up to :attr:`max_batch`) dirty keys of this phase; return how many
        requests were written."""
        deletes: list[tuple[K, V]] = []
        adds: list[tuple[K, V]] = []
        clean: list[K] = []
        retry = self._retry
        budget = self.max_batch
        if phase is Phase.REMOVE:
            dirty = self._dirty_rm
            for key in dirty:
                if retry and key in retry and retry[key].not_before > now:
                    continue
                have = self.observed.get(key)
                if have is None or self.protect_unwanted or key in self.desired:
                    clean.append(key)  # (protected: kept until release_protection())
                else:
                    deletes.append((key, have))
                    if len(deletes) >= budget:
                        break
        else:
            dirty = self._dirty_add
            for key in dirty:
                if retry and key in retry and retry[key].not_before > now:
                    continue
                want = self.desired.get(key)
                have = self.observed.get(key)
                if want is None or (have is not None and self._same(want, have)):
                    clean.append(key)
                    continue
                if have is not None and not self.replace_in_place:
                    deletes.append((key, have))
                adds.append((key, want))
                if len(adds) >= budget:
                    break
        for key in clean:
            dirty.discard(key)
            retry.pop(key, None)
        self._shrink()
        if not deletes and not adds:
            return 0
        self.stats.applies += 1
        started = len(deletes) + len(adds)
        t0 = time.monotonic()
        errnos = await self._write(deletes, adds)
        self.stats.observe_apply(time.monotonic() - t0)
        self.stats.writes += len(errnos)
        failed: dict[K, int] = {}
        for (key, _), err in zip(deletes, errnos[: len(deletes)], strict=True):
            if err == 0 or err in GONE_ERRNOS:
                self._unobserve(key)
                self._changed(key)
            else:
                failed[key] = err
        for (key, value), err in zip(adds, errnos[len(deletes) :], strict=True):
            if err == 0:
                self._observe(key, value)
                self._changed(key)
            elif key not in failed:
                failed[key] = err
        converged = self._converged
        for key, _ in (*deletes, *adds):
            if key in failed:
                self._fail(key, failed[key], now)
            elif converged(key):
                dirty.discard(key)
                retry.pop(key, None)
            else:
                # the wish changed while the batch was being written: dirty again, in the
                # set of what it needs now (the change alone may have left it clean: it
                # compared the new wish with what was installed *before* this write)
                self._mark(key)
        if failed:
            self._log_failures(failed, started)
        self._shrink()
        return len(errnos)

    def _shrink(self) -> None:
        """A set keeps the table of its largest size: after a bulk load has drained, give
        the memory of 100k dirty keys back instead of holding it forever."""
        if not self._dirty_add:
            self._dirty_add = set()
        if not self._dirty_rm:
            self._dirty_rm = set()

    def _fail(self, key: K, err: int, now: float) -> None:
        retry = self._retry.get(key)
        attempts = 1 if retry is None else retry.attempts + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** (attempts - 1)))
        self._retry[key] = _Retry(attempts, now + delay)
        if attempts == 1 and err in DEVICE_GONE_ERRNOS:
            return  # (see DEVICE_GONE_ERRNOS; it is retried all the same)
        self.stats.errors += 1
        self.stats.last_error = f"{key}: {errno.errorcode.get(err, str(err))}"
        if err == errno.EEXIST:
            # Someone else's object occupies the key, or ours was changed behind our back:
            # re-read the kernel before the retry (never overwrite a foreign object).
            self._resync_pending = True

    def _log_failures(self, failed: dict[K, int], batch: int) -> None:
        """One line per batch, not per object: a failing bulk load must not flood logs."""
        key, err = next(iter(failed.items()))
        attempts = self._retry[key].attempts if key in self._retry else 1
        level = logging.WARNING if attempts in (1, 5) or attempts % 20 == 0 else logging.DEBUG
        if attempts == 1 and all(e in DEVICE_GONE_ERRNOS for e in failed.values()):
            level = logging.DEBUG
        log.log(
            level,
            "%s: %d of %d writes failed, e.g. %s: %s (attempt %d, retried with backoff)",
            self.name,
            len(failed),
            batch,
            key,
            errno.errorcode.get(err, str(err)),
            attempts,
        )

    # ---- subclass hooks ----------------------------------------------------------------------

    def _same(self, desired: V, observed: V) -> bool:
        return desired == observed

    def _group(self, key: K, value: V) -> Hashable:
        """The group an observed object is indexed by (with ``_by_group``)."""
        raise NotImplementedError

    def _converged(self, key: K) -> bool:
        """After a write: does the kernel hold what is wished for this key now?"""
        return self.desired.get(key) == self.observed.get(key)

    @abc.abstractmethod
    async def _dump(self) -> dict[K, V]:
        """Read every object we own from the kernel."""

    @abc.abstractmethod
    async def _write(
        self, deletes: Sequence[tuple[K, V]], adds: Sequence[tuple[K, V]]
    ) -> list[int]:
        """Delete then add, in one batch; return one errno per request (0 = done)."""
