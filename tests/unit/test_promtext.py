"""l3hostd.promtext against prometheus_client, the oracle: byte-identical exposition.

The same metric families are built with prometheus_client's classes in its registry and
with ours in ours; both exposition formats (text 0.0.4 and OpenMetrics 1.0.0, under every
``escaping`` of the Accept header) must come out byte for byte the same, for a fixed rich
set of families and for random ones (hypothesis). Content negotiation, Go float formatting
and the process collector are compared the same way, and a fresh interpreter checks that
the daemon no longer imports prometheus_client (nor http.server, urllib.request, email).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import prometheus_client.metrics_core as prom_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry as PromRegistry
from prometheus_client import exposition as prom_text
from prometheus_client.openmetrics import exposition as prom_om
from prometheus_client.process_collector import ProcessCollector as PromProcessCollector
from prometheus_client.utils import floatToGoString

from l3hostd import promtext
from l3hostd.promtext import (
    CollectorRegistry,
    ProcessCollector,
    choose_encoder,
    generate_openmetrics,
    generate_text,
)

ROOT = Path(__file__).resolve().parents[2]
ESCAPINGS = ["underscores", "allow-utf-8", "dots", "values", "bogus"]

VALUES: list[float] = [0, 1, -1, 1.5, 1e-9, 123456789.0, 1e21, math.inf, -math.inf, math.nan,
                       0.0, -0.0, 3, 10**6, 1234567.0, 1e6, 1.5e6, 12345678.9, 0.1, -1e21,
                       1e16, 2.5e-5, 5e-324, 1.7976931348623157e308, 2**53 + 1, -123456789.0]
LABEL_VALUES = ["", "plain", "ünïcödé ☃", "emoji 🙂", "back\\slash", 'quo"te', "new\nline",
                "tab\tand\rcr", 'all \\ " \n at once \\n', "{braces}=,comma"]
HELPS = ["", "Plain help.", "back\\slash and new\nline", 'with "quotes"', "ünïcödé ☃ 🙂",
         "trailing backslash \\", "\\n literal"]


class Static:
    """A collector of fixed families (works in both registries)."""

    def __init__(self, families: Sequence[Any]) -> None:
        self.families = list(families)

    def collect(self) -> list[Any]:
        return self.families


def rich(lib: ModuleType) -> list[Any]:
    """The same families, built with ``lib`` (prometheus_client's metrics_core or ours)."""
    out: list[Any] = []
    for i, v in enumerate(VALUES):
        out.append(lib.GaugeMetricFamily(f"g_value_{i}", HELPS[i % len(HELPS)], value=v))
        out.append(lib.CounterMetricFamily(f"c_value_{i}_total", "A counter.", value=v))
    g = lib.GaugeMetricFamily("g_labels", 'Gauge "with" labels\\.', labels=["a", "zz", "b_1"])
    for i, lv in enumerate(LABEL_VALUES):
        g.add_metric([lv, "x", LABEL_VALUES[-1 - i]], VALUES[i])
    out.append(g)
    for name in ("requests_total", "errors", "total", "a_total_total"):
        c = lib.CounterMetricFamily(name, "Counter\nhelp.", labels=["peer", "type"])
        for i, lv in enumerate(LABEL_VALUES):
            c.add_metric([lv, "open"], i * 1.5)
        out.append(c)
    h = lib.HistogramMetricFamily("h_seconds", "A histogram.", labels=["reconciler"])
    for i, lv in enumerate(LABEL_VALUES[:5]):
        h.add_metric([lv], [("0.001", 1.0 * i), ("0.1", 2.0 * i), ("1e-05", 3.0),
                            ("1000000.0", 4.0 * i), ("+Inf", 5.0 * i)], 0.25 * i)
    out.append(h)
    unlabelled = lib.HistogramMetricFamily("h_plain", "")
    unlabelled.add_metric([], [("+Inf", 0.0)], 0.0)
    out.append(unlabelled)
    negative = lib.HistogramMetricFamily("h_negative", "Negative buckets: no _count/_sum.",
                                         labels=["x"])
    negative.add_metric(["y"], [("-1.0", 1.0), ("+Inf", 2.0)], -3.0)
    negative.add_metric(["z"], [("0.5", 1.0), ("+Inf", 2.0)], None)
    out.append(negative)
    out.append(lib.SummaryMetricFamily("s_seconds", "A summary.", count_value=7,
                                       sum_value=1.25))
    s = lib.SummaryMetricFamily("s_labelled", "Labelled summary.", labels=["k"])
    s.add_metric(["v\n"], 3, math.inf)
    s.add_metric(["w"], 0, 0.0)
    out.append(s)
    # empty families: HELP and TYPE only
    out.append(lib.GaugeMetricFamily("g_empty", "No samples.", labels=["peer", "error"]))
    out.append(lib.CounterMetricFamily("c_empty_total", "No samples.", labels=["peer"]))
    out.append(lib.HistogramMetricFamily("h_empty", "No samples.", labels=["peer"]))
    out.append(lib.SummaryMetricFamily("s_empty", "No samples."))
    # label-count mismatches are truncated silently by both
    short = lib.GaugeMetricFamily("g_short", "Fewer values than labels.", labels=["a", "b"])
    short.add_metric(["only_a"], 1)
    short.add_metric(["a", "b", "extra"], 2)
    out.append(short)
    return out


def registries(build: Callable[[ModuleType], Iterable[Any]]) -> tuple[CollectorRegistry,
                                                                       PromRegistry]:
    ours, theirs = CollectorRegistry(), PromRegistry()
    ours.register(Static(list(build(promtext))))
    theirs.register(Static(list(build(prom_core))))  # type: ignore[arg-type]
    return ours, theirs


def assert_same_output(ours: CollectorRegistry, theirs: PromRegistry) -> None:
    for escaping in ESCAPINGS:
        assert generate_text(ours, escaping) == prom_text.generate_latest(theirs, escaping)
        assert generate_openmetrics(ours, escaping) == prom_om.generate_latest(theirs, escaping)


# ---- families and exposition -----------------------------------------------------------------


def test_rich_families_are_written_byte_for_byte_as_prometheus_client_does() -> None:
    ours, theirs = registries(rich)
    text = generate_text(ours)
    assert text == prom_text.generate_latest(theirs)
    assert generate_openmetrics(ours) == prom_om.generate_latest(theirs)
    assert_same_output(ours, theirs)
    # the cases are really there
    assert b"# TYPE requests_total counter\nrequests_total{" in text
    assert b"# TYPE total_total counter" in text
    assert b'a="back\\\\slash"' in text and b'a="quo\\"te"' in text
    assert b'a="new\\nline"' in text and "☃".encode() in text
    assert b" +Inf\n" in text and b" -Inf\n" in text and b" NaN\n" in text
    assert b" 1e+21\n" in text and b" 1.23456789e+08\n" in text and b" 1e-09\n" in text
    assert b"# HELP g_empty No samples.\n# TYPE g_empty gauge\n# HELP" in text
    assert b"h_negative_count" not in text and b'h_negative_bucket{le="-1.0",x="y"}' in text
    om = generate_openmetrics(ours)
    assert om.endswith(b"# EOF\n") and b"# TYPE requests counter\nrequests_total{" in om


def test_families_match_prometheus_clients_in_name_type_and_samples() -> None:
    for mine, ref in zip(rich(promtext), rich(prom_core), strict=True):
        assert (mine.name, mine.type, mine.documentation) == (ref.name, ref.type,
                                                              ref.documentation)
        assert [(s.name, s.labels) for s in mine.samples] == [
            (s.name, s.labels) for s in ref.samples]
        assert [floatToGoString(s.value) for s in mine.samples] == [
            floatToGoString(s.value) for s in ref.samples]


def test_counter_names_are_normalised_like_prometheus_clients() -> None:
    for name in ("x", "x_total", "x_total_total", "x_totals", "total_x"):
        mine = promtext.CounterMetricFamily(name, "", value=1)
        ref = prom_core.CounterMetricFamily(name, "", value=1)
        assert mine.name == ref.name
        assert [s.name for s in mine.samples] == [s.name for s in ref.samples]


def test_constructor_argument_checks_match() -> None:
    for lib in (promtext, prom_core):
        with pytest.raises(ValueError):
            lib.GaugeMetricFamily("g", "", value=1, labels=["a"])
        with pytest.raises(ValueError):
            lib.CounterMetricFamily("c", "", value=1, labels=["a"])
        with pytest.raises(ValueError):
            lib.SummaryMetricFamily("s", "", count_value=1)
        with pytest.raises(ValueError):
            lib.SummaryMetricFamily("s", "", count_value=1, sum_value=1.0, labels=["a"])
        with pytest.raises(ValueError):
            lib.CounterMetricFamily("_total", "")
        with pytest.raises(ValueError):
            lib.GaugeMetricFamily("", "")


def test_names_outside_the_legacy_set_are_refused() -> None:
    # prometheus_client accepts UTF-8 names (quoting or escaping them); we do not need them
    for name in ("a:b", "1abc", "a-b", "a.b", "é", "a b", "", "a\n"):
        with pytest.raises(ValueError):
            promtext.GaugeMetricFamily(name, "")
        with pytest.raises(ValueError):
            promtext.GaugeMetricFamily("g", "", labels=[name])
    with pytest.raises(ValueError):  # reserved label names
        promtext.GaugeMetricFamily("g", "", labels=["__name__"])
    assert promtext.GaugeMetricFamily("__g", "", labels=["_x"]).name == "__g"
    with pytest.raises(ValueError):
        promtext.Metric("x", "", "untyped")


def test_registry_registers_unregisters_and_keeps_order() -> None:
    a = Static([promtext.GaugeMetricFamily("a", "", value=1)])
    b = Static([promtext.GaugeMetricFamily("b", "", value=2)])
    reg = CollectorRegistry()
    reg.register(a)
    reg.register(b)
    reg.register(a)  # as prometheus_client without describe(): still once, same place
    assert [m.name for m in reg.collect()] == ["a", "b"]
    reg.unregister(a)
    assert [m.name for m in reg.collect()] == ["b"]
    with pytest.raises(KeyError):
        reg.unregister(a)
    assert generate_text(CollectorRegistry()) == b""
    assert generate_openmetrics(CollectorRegistry()) == b"# EOF\n"


@pytest.mark.parametrize("value", VALUES)
def test_float_formatting_is_floatToGoString(value: float) -> None:
    assert promtext._go_float(value) == floatToGoString(value)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(), st.integers(-(2**70), 2**70)))
def test_float_formatting_is_floatToGoString_for_any_float(value: float) -> None:
    assert promtext._go_float(value) == floatToGoString(value)


# ---- hypothesis: random families ------------------------------------------------------------

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
label_names = names.filter(lambda n: not n.startswith("__"))  # reserved
values = st.one_of(st.floats(), st.integers(-(2**64), 2**64))
texts = st.text(max_size=20)


@st.composite
def family_specs(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["gauge", "counter", "summary", "histogram"]))
    name = draw(names.filter(lambda n: n.removesuffix("_total") != ""))
    doc = draw(texts)
    labelnames = draw(st.lists(label_names, max_size=3))
    series = []
    for _ in range(draw(st.integers(0, 3))):
        labelvalues = draw(st.lists(texts, min_size=len(labelnames), max_size=len(labelnames)))
        if kind == "histogram":
            bounds = sorted(draw(st.lists(st.floats(allow_nan=False, allow_infinity=False),
                                          max_size=4)))
            counts = sorted(draw(st.lists(values, min_size=len(bounds) + 1,
                                          max_size=len(bounds) + 1).filter(
                lambda vs: not any(isinstance(v, float) and math.isnan(v) for v in vs))))
            le = [repr(b) for b in bounds] + ["+Inf"]
            series.append((labelvalues, list(zip(le, counts, strict=True)),
                           draw(st.none() | values)))
        else:
            series.append((labelvalues, draw(values), draw(values)))
    unlabelled = draw(st.none() | st.tuples(values, values)) if not labelnames else None
    return kind, name, doc, labelnames, series, unlabelled


def build(lib: ModuleType, spec: tuple[Any, ...]) -> Any:
    kind, name, doc, labelnames, series, unlabelled = spec
    if kind == "histogram":
        family = lib.HistogramMetricFamily(name, doc, labels=labelnames)
        for labelvalues, buckets, total in series:
            family.add_metric(labelvalues, buckets, total)
        return family
    if unlabelled is not None:
        if kind == "summary":
            return lib.SummaryMetricFamily(name, doc, count_value=unlabelled[0],
                                           sum_value=unlabelled[1])
        cls = lib.GaugeMetricFamily if kind == "gauge" else lib.CounterMetricFamily
        return cls(name, doc, value=unlabelled[0])
    if kind == "summary":
        family = lib.SummaryMetricFamily(name, doc, labels=labelnames)
        for labelvalues, count, total in series:
            family.add_metric(labelvalues, count, total)
        return family
    cls = lib.GaugeMetricFamily if kind == "gauge" else lib.CounterMetricFamily
    family = cls(name, doc, labels=labelnames)
    for labelvalues, value, _ in series:
        family.add_metric(labelvalues, value)
    return family


@settings(max_examples=300, deadline=None)
@given(st.lists(family_specs(), max_size=5))
def test_random_families_are_written_as_prometheus_client_does(
        specs: list[tuple[Any, ...]]) -> None:
    ours, theirs = registries(lambda lib: [build(lib, spec) for spec in specs])
    assert_same_output(ours, theirs)


# ---- content negotiation --------------------------------------------------------------------

ACCEPT = [
    "",
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain;version=1.0.0",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=bogus",
    "text/plain;version=2",
    "text/plain; version=1.0.0; version=0.0.4",
    "text/plain;q=0.5,application/openmetrics-text",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=0.0.1",
    "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;escaping=dots",
    "application/openmetrics-text;escaping=dots;version=1.0.0",
    "application/openmetrics-text; version=2.0.0",
    "application/openmetrics-text; version=",
    "application/openmetrics-text; version = 1.0.0",
    "application/openmetrics-text; version=01.0.0",
    "application/openmetrics-text; version=1",
    "application/openmetrics-text; version=1.0",
    "application/openmetrics-text;version=1.0.0;q=0.5 , text/plain",
    # Prometheus 2.x and 3.x scrape defaults
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "*/*",
    "application/json",
    "TEXT/PLAIN; version=1.0.0",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "garbage;;;==,,;=;version",
    ";;,,",
]


def assert_same_choice(header: str, as_prom_would_for: str | None = None) -> None:
    ours_reg, prom_reg = registries(rich)
    encode, content_type = choose_encoder(header)
    prom_encode, prom_content_type = prom_text.choose_encoder(
        header if as_prom_would_for is None else as_prom_would_for)
    assert content_type == prom_content_type
    assert encode(ours_reg) == prom_encode(prom_reg)


@pytest.mark.parametrize("header", ACCEPT)
def test_choose_encoder_negotiates_as_prometheus_client(header: str) -> None:
    assert_same_choice(header)


@pytest.mark.parametrize(("header", "rest"), [
    ("application/openmetrics-text; version=abc", ""),
    ("application/openmetrics-text; version=1.x,text/plain;version=1.0.0",
     "text/plain;version=1.0.0"),
    ("text/plain; version=1.0.0-rc1, application/openmetrics-text",
     "application/openmetrics-text"),
])
def test_an_unparsable_version_is_skipped_where_prometheus_client_raises(
        header: str, rest: str) -> None:
    with pytest.raises(TypeError):
        prom_text.choose_encoder(header)
    assert_same_choice(header, as_prom_would_for=rest)


def test_content_types_are_prometheus_clients() -> None:
    assert promtext.CONTENT_TYPE_TEXT == prom_text.CONTENT_TYPE_PLAIN_0_0_4
    assert promtext.CONTENT_TYPE_OPENMETRICS == prom_om.CONTENT_TYPE_LATEST
    assert choose_encoder("") == (generate_text, "text/plain; version=0.0.4; charset=utf-8")


# ---- process collector ----------------------------------------------------------------------


def test_process_collector_yields_prometheus_clients_families_with_close_values() -> None:
    mine = {m.name: m for m in ProcessCollector().collect()}
    ref = {m.name: m for m in PromProcessCollector(registry=None).collect()}
    assert list(mine) == list(ref) == [
        "process_virtual_memory_bytes", "process_resident_memory_bytes",
        "process_start_time_seconds", "process_cpu_seconds", "process_open_fds",
        "process_max_fds"]
    for name, m in mine.items():
        r = ref[name]
        assert (m.type, m.documentation) == (r.type, r.documentation)
        assert [(s.name, s.labels) for s in m.samples] == [(s.name, s.labels) for s in r.samples]
    value = {name: m.samples[0].value for name, m in mine.items()}
    want = {name: m.samples[0].value for name, m in ref.items()}
    mib = 1024 * 1024
    assert abs(value["process_resident_memory_bytes"] - want["process_resident_memory_bytes"]) \
        < 4 * mib
    assert abs(value["process_virtual_memory_bytes"] - want["process_virtual_memory_bytes"]) \
        < 64 * mib
    assert value["process_start_time_seconds"] == want["process_start_time_seconds"]
    assert abs(value["process_cpu_seconds"] - want["process_cpu_seconds"]) < 1.0
    assert abs(value["process_open_fds"] - want["process_open_fds"]) <= 2
    assert value["process_max_fds"] == want["process_max_fds"]
    assert value["process_resident_memory_bytes"] > 10 * mib


def fake_proc(root: Path, btime: bool = True, limits: bool = True) -> str:
    (root / "self" / "fd").mkdir(parents=True)
    (root / "stat").write_text("cpu  1 2 3 4\nintr 5\n" + ("btime 1700000000\n" if btime else "")
                               + "processes 99\n")
    fields = [str(1000 + i) for i in range(50)]
    fields[0] = "S"
    fields[11], fields[12] = "250", "125"  # utime, stime (ticks)
    fields[19], fields[20], fields[21] = "123456", "987654321", "4321"  # start, vsize, rss
    (root / "self" / "stat").write_text("4242 (l3host) d) " + " ".join(fields) + "\n")
    if limits:
        (root / "self" / "limits").write_text(
            "Limit                     Soft Limit           Hard Limit           Units\n"
            "Max cpu time              unlimited            unlimited            seconds\n"
            "Max open files            4096                 524288               files\n")
    for fd in range(7):
        (root / "self" / "fd" / str(fd)).touch()
    return str(root)


@pytest.mark.parametrize(("btime", "limits"), [(True, True), (False, True), (True, False)])
def test_process_collector_on_a_fake_proc_is_byte_identical(
        tmp_path: Path, btime: bool, limits: bool) -> None:
    proc = fake_proc(tmp_path, btime, limits)
    ours, theirs = CollectorRegistry(), PromRegistry()
    ProcessCollector(registry=ours, proc=proc)
    PromProcessCollector(proc=proc, registry=theirs)
    assert_same_output(ours, theirs)
    text = generate_text(ours)
    if btime:
        rss, ticks = 4321 * os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
        assert f"process_resident_memory_bytes {floatToGoString(rss)}\n".encode() in text
        cpu = floatToGoString(250 / ticks + 125 / ticks)
        assert f"process_cpu_seconds_total {cpu}\n".encode() in text
        # no limits file: neither fd family (the fd count goes with it, as in theirs)
        assert (b"process_open_fds 7.0\n" in text) == limits
        assert (b"process_max_fds 4096.0\n" in text) == limits
    else:
        assert text == b""


def test_process_collector_without_proc_yields_nothing(tmp_path: Path) -> None:
    ours, theirs = CollectorRegistry(), PromRegistry()
    ProcessCollector(registry=ours, proc=str(tmp_path / "missing"))
    PromProcessCollector(proc=str(tmp_path / "missing"), registry=theirs)
    assert generate_text(ours) == prom_text.generate_latest(theirs) == b""


# ---- the point: the daemon does not import prometheus_client ----------------------------------


def test_the_daemon_imports_neither_prometheus_client_nor_its_http_baggage() -> None:
    code = (
        "import json, sys\n"
        "import l3hostd.metrics, l3hostd.daemon\n"
        "heavy = ('prometheus_client', 'http.server', 'urllib.request', 'email', 'wsgiref')\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "                        if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == []
