"""Prometheus metric families and their text exposition, without prometheus_client.

How it works
    A collector's ``collect()`` yields :class:`Metric` families -- :class:`GaugeMetricFamily`,
    :class:`CounterMetricFamily`, :class:`SummaryMetricFamily`,
    :class:`HistogramMetricFamily` -- each a name, a HELP text, a type and a list of
    :class:`Sample` (name, labels, value). A :class:`CollectorRegistry` holds collectors
    and chains their families; :func:`generate_text` writes them in the Prometheus text
    format 0.0.4 and :func:`generate_openmetrics` in OpenMetrics 1.0.0 text, and
    :func:`choose_encoder` picks one of them from an HTTP ``Accept`` header.
    :class:`ProcessCollector` reads ``/proc`` for the standard ``process_*`` families (CPU,
    memory, start time, file descriptors). The classes and functions have the names and
    call signatures of their prometheus_client counterparts (the subset
    :mod:`l3hostd.metrics` uses), and the bytes written are the ones prometheus_client
    writes for the same families: same float formatting (Go's, ``floatToGoString``), same
    escaping (label values: backslash, newline, double quote; HELP: backslash and newline
    in text 0.0.4, also the double quote in OpenMetrics), same counter naming (family
    ``x`` has the sample ``x_total``; text 0.0.4 types it as ``x_total``, OpenMetrics as
    ``x``), same content negotiation, including the ``escaping`` parameter of the
    ``Accept`` header -- quirks included.

    Metric and label names must match ``[a-zA-Z_][a-zA-Z0-9_]*``, label names must not
    start with ``__`` (ValueError otherwise): the legacy character set without the colon
    (reserved for recording rules) and without reserved label names, so a name is written
    as is, or with ``_`` doubled for ``escaping=dots``. Timestamps, exemplars,
    units, ``_created`` samples and the other metric types are left out: our collectors
    do not produce them.

Why it is built this way
    Importing prometheus_client costs 3.3 MiB of RSS (it pulls in http.server,
    urllib.request, email, wsgiref...: ``import uvloop, l3hostd.cli, l3hostd.daemon`` was
    40.2 MiB with it, 36.8 MiB without) and the daemon has a 50 MiB budget. The formats
    are specified (Prometheus text format 0.0.4, OpenMetrics 1.0.0), so the writer is
    small; prometheus_client stays a dependency and is the oracle in the tests
    (``tests/unit/test_promtext.py``): our output must be byte-identical to its output.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import NamedTuple, Protocol

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "Collector",
    "CollectorRegistry",
    "CounterMetricFamily",
    "GaugeMetricFamily",
    "HistogramMetricFamily",
    "Metric",
    "ProcessCollector",
    "Sample",
    "SummaryMetricFamily",
    "choose_encoder",
    "generate_openmetrics",
    "generate_text",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_TEXT_1 = "text/plain; version=1.0.0; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# the ``escaping`` values of an Accept header (metric and label names)
UNDERSCORES, ALLOWUTF8, DOTS, VALUES = "underscores", "allow-utf-8", "dots", "values"

TYPES = ("counter", "gauge", "summary", "histogram")
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _check_name(name: str, label: bool = False) -> str:
    if not _NAME.fullmatch(name) or (label and name.startswith("__")):
        raise ValueError(f"invalid {'label' if label else 'metric'} name {name!r}")
    return name


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Metric:
    """A metric family: name, HELP text, type and samples."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        if typ not in TYPES:
            raise ValueError(f"invalid metric type {typ!r}")
        self.name = _check_name(name)
        self.documentation = documentation
        self.type = typ
        self.samples: list[Sample] = []

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.samples})"


class _Family(Metric):
    def __init__(self, name: str, documentation: str, typ: str,
                 labels: Sequence[str] | None, value_given: bool) -> None:
        super().__init__(name, documentation, typ)
        if labels is not None and value_given:
            raise ValueError("Can only specify at most one of value and labels.")
        self._labelnames = tuple(_check_name(label, True) for label in labels or ())

    def _labels(self, values: Sequence[str]) -> dict[str, str]:
        # like prometheus_client: extra or missing values are dropped silently
        return dict(zip(self._labelnames, values, strict=False))


class GaugeMetricFamily(_Family):
    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name, documentation, "gauge", labels, value is not None)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name, self._labels(labels), value))


class CounterMetricFamily(_Family):
    """Family ``x`` (a trailing ``_total`` is taken off the name), sample ``x_total``."""

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        name = name.removesuffix("_total")
        super().__init__(name, documentation, "counter", labels, value is not None)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name + "_total", self._labels(labels), value))


class SummaryMetricFamily(_Family):
    def __init__(self, name: str, documentation: str, count_value: float | None = None,
                 sum_value: float | None = None, labels: Sequence[str] | None = None) -> None:
        if (sum_value is None) != (count_value is None):
            raise ValueError("count_value and sum_value must be provided together.")
        super().__init__(name, documentation, "summary", labels, count_value is not None)
        if count_value is not None and sum_value is not None:
            self.add_metric([], count_value, sum_value)

    def add_metric(self, labels: Sequence[str], count_value: float, sum_value: float) -> None:
        values = self._labels(labels)
        self.samples.append(Sample(self.name + "_count", values, count_value))
        self.samples.append(Sample(self.name + "_sum", values, sum_value))


class HistogramMetricFamily(_Family):
    def __init__(self, name: str, documentation: str, *,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name, documentation, "histogram", labels, False)

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]],
                   sum_value: float | None) -> None:
        """``buckets``: (upper bound as written in ``le``, cumulative count), sorted,
        ``+Inf`` last (its count is ``_count``)."""
        values = self._labels(labels)
        for bound, count in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**values, "le": bound}, count))
        # as prometheus_client: no _count and _sum with negative buckets
        if float(buckets[0][0]) >= 0 and sum_value is not None:
            self.samples.append(Sample(self.name + "_count", values, buckets[-1][1]))
            self.samples.append(Sample(self.name + "_sum", values, sum_value))


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class CollectorRegistry:
    """Collectors, in the order registered (registering one twice keeps one)."""

    def __init__(self) -> None:
        self._collectors: dict[Collector, None] = {}

    def register(self, collector: Collector) -> None:
        self._collectors[collector] = None

    def unregister(self, collector: Collector) -> None:
        del self._collectors[collector]

    def collect(self) -> Iterator[Metric]:
        for collector in list(self._collectors):
            yield from collector.collect()


class ProcessCollector:
    """prometheus_client's ProcessCollector on Linux: the same families from the same
    ``/proc`` files, the same way (nothing when ``/proc/stat`` has no boot time)."""

    def __init__(self, *, registry: CollectorRegistry | None = None,
                 proc: str = "/proc") -> None:
        self._proc = proc
        try:
            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError):
            self._ticks = 100.0
        self._pagesize = os.sysconf("SC_PAGE_SIZE")  # = resource.getpagesize()
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass
        if registry is not None:
            registry.register(self)

    def collect(self) -> list[Metric]:
        if not self._btime:
            return []
        pid = os.path.join(self._proc, "self")
        result: list[Metric] = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            ticks = self._ticks
            result += [
                GaugeMetricFamily("process_virtual_memory_bytes",
                                  "Virtual memory size in bytes.", value=float(parts[20])),
                GaugeMetricFamily("process_resident_memory_bytes",
                                  "Resident memory size in bytes.",
                                  value=float(parts[21]) * self._pagesize),
                GaugeMetricFamily("process_start_time_seconds",
                                  "Start time of the process since unix epoch in seconds.",
                                  value=float(parts[19]) / ticks + self._btime),
                CounterMetricFamily("process_cpu_seconds_total",
                                    "Total user and system CPU time spent in seconds.",
                                    value=float(parts[11]) / ticks + float(parts[12]) / ticks),
            ]
        except OSError:
            pass
        try:
            max_fds = None
            with open(os.path.join(pid, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = GaugeMetricFamily(
                            "process_max_fds", "Maximum number of open file descriptors.",
                            value=float(line.split()[3]))
                        break
            open_fds = GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                         len(os.listdir(os.path.join(pid, "fd"))))
            result += [open_fds] if max_fds is None else [open_fds, max_fds]
        except OSError:
            pass
        return result


# ---- exposition -----------------------------------------------------------------------------


def _go_float(value: float) -> str:
    """prometheus_client's ``floatToGoString``: Go's formatting of a float."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go switches to exponents sooner than Python
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(text: str) -> str:
    """Label values (both formats) and OpenMetrics HELP."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _dots(name: str) -> str:
    return name.replace("_", "__")  # escaping=dots of a name without '.' or ':'


def _same(name: str) -> str:
    return name


def _line(name: str, sample: Sample, label: Callable[[str], str]) -> str:
    value = _go_float(sample.value)
    if not sample.labels:
        return f"{name} {value}\n"
    pairs = ",".join(f'{label(k)}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
    return f"{name}{{{pairs}}} {value}\n"


def generate_text(registry: Collector, escaping: str = UNDERSCORES) -> bytes:
    """Text format 0.0.4 (``CONTENT_TYPE_TEXT``), as prometheus_client's generate_latest."""
    name = _dots if escaping == DOTS else _same
    out: list[str] = []
    for metric in registry.collect():
        family = name(metric.name + "_total" if metric.type == "counter" else metric.name)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family} {doc}\n# TYPE {family} {metric.type}\n")
        out.extend(_line(name(s.name), s, name) for s in metric.samples)
    return "".join(out).encode("utf-8")


def generate_openmetrics(registry: Collector, escaping: str = UNDERSCORES) -> bytes:
    """OpenMetrics 1.0.0 text (``CONTENT_TYPE_OPENMETRICS``), as
    prometheus_client.openmetrics.exposition.generate_latest."""
    name = _dots if escaping == DOTS else _same
    # prometheus_client's quirk: escaping=values prefixes sample names (only) with U__
    sample = (lambda n: "U__" + _dots(n)) if escaping == VALUES else name
    out: list[str] = []
    for metric in registry.collect():
        family = name(metric.name)
        out.append(f"# HELP {family} {_escape(metric.documentation)}\n"
                   f"# TYPE {family} {metric.type}\n")
        out.extend(_line(sample(s.name), s, name) for s in metric.samples)
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


Encoder = Callable[[Collector], bytes]


def _param(toks: list[str], key: str) -> str | None:
    for tok in toks:
        if "=" in tok:
            k, value = tok.strip().split("=", 1)
            if k == key:
                return value
    return None


def _at_least_1(version: str) -> bool:
    parts: list[int | str] = []
    for part in version.split("."):
        try:
            parts.append(int(part))
        except ValueError:
            parts.append(part)
    try:
        return tuple(parts) >= (1, 0, 0)
    except TypeError:  # e.g. "1.x": prometheus_client raises, we try the next type
        return False


def choose_encoder(accept_header: str) -> tuple[Encoder, str]:
    """The encoder and content type for an ``Accept`` header, as prometheus_client's
    choose_encoder: the first acceptable of OpenMetrics (no version, or >= 1.0.0) or
    text/plain >= 1.0.0 (the 0.0.4 format), else text 0.0.4; q-values are ignored."""
    for accepted in (accept_header or "").split(","):
        toks = accepted.split(";")
        media = toks[0].strip()
        if media not in ("application/openmetrics-text", "text/plain"):
            continue
        version = _param(toks, "version") or ""
        escaping = _param(toks, "escaping")
        if escaping not in (ALLOWUTF8, UNDERSCORES, DOTS, VALUES):
            escaping = UNDERSCORES
        if media == "text/plain":
            if version and _at_least_1(version):
                return (partial(generate_text, escaping=escaping),
                        f"{CONTENT_TYPE_TEXT_1}; escaping={escaping}")
        elif not version:
            return generate_openmetrics, CONTENT_TYPE_OPENMETRICS
        elif _at_least_1(version):
            return (partial(generate_openmetrics, escaping=escaping),
                    f"application/openmetrics-text; version={version}; charset=utf-8; "
                    f"escaping={escaping}")
    return generate_text, CONTENT_TYPE_TEXT
