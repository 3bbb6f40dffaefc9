"""The report of benchmarks/udp_bench.py: issue 14's targets judged (:func:`checks`) and the table (:func:`table`)."""

from file_bench import human_size  # benchmarks/ is the script's dir
import procs

MB = 1e6
RAW_SHARE = 0.50  # the stream on loopback: at least this share of (a)'s rate
QUIC_TIMES = 5.0  # ... and at least this many times aioquic's
LOSS_TIME = 3.0  # through the proxy: the 20%-loss run at most this many times the 0%-loss run
RESENT_TIMES = 1.5  # retransmitted bytes at most this many times the lost bytes
RSS_TARGET_MB = 150.0  # each end's peak resident memory over the memory run
HARD_LOSS = "0.2"


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def ratio(a, b):
    return a / b if a is not None and b else None


def cpu_text(cpu):
    return " / ".join("%s %s" % (k, fmt(v, "%.0f")) for k, v in cpu.items() if k != "machine")


def ends(row):
    """The stream's two reports in a row: ``(receiver, sender)``, each a dict (empty when it had none)."""
    return row.get("receiver") or {}, row.get("sender") or {}


def dropped_c2s(row):
    """``(datagrams, bytes)`` the proxy dropped on the way to the receiver (None without a proxy)."""
    c2s = (row.get("proxy") or {}).get("c2s")
    return (c2s["dropped_total"], c2s["dropped_bytes"]) if c2s else (None, None)


def peak_mb(row):
    """Each end's peak resident memory in a row: its own VmHWM, else the largest VmRSS sampled."""
    rx, tx = ends(row)
    sampled = row.get("rss_mb") or {}
    return {"receiver": rx.get("hwm_mb") or sampled.get("receiver"), "sender": tx.get("hwm_mb") or
            sampled.get("sender")}


def checks(report) -> list:
    """Issue 14's targets, each ``{"check", "value", "pass"}`` (pass None: not judged in this run)."""
    out = []

    def check(name, value, ok):
        out.append({"check": name, "value": value, "pass": ok})
    loop = report["loopback"]
    stream, raw, quic = loop.get("stream"), loop.get("raw"), loop.get("aioquic")
    for name, base, target, text in (("(a) raw", raw, RAW_SHARE, "%.1f%% of %.1f MB/s"),
                                     ("(c) aioquic", quic, QUIC_TIMES, "%.1fx %.1f MB/s")):
        want = "%.0f%%" % (100 * target) if target < 1 else "%gx" % target
        r = ratio(stream and stream["MBps"], base and base["MBps"])
        check("stream lossless >= %s %s" % (want, ("of " if target < 1 else "") + name),
              "-" if r is None else text % (100 * r if target < 1 else r, base["MBps"]),
              None if r is None else r >= target and stream["complete"])
    zero, hard = (report["lossy"].get(k, {}).get("stream") for k in ("0", HARD_LOSS))
    r = ratio(hard and hard["seconds"], zero and zero["seconds"])
    check("proxy: stream time at 20%% loss <= %gx its 0%% run" % LOSS_TIME,
          "-" if r is None else "%.2fx (%.2f s / %.2f s)%s" % (
              r, hard["seconds"], zero["seconds"], "" if hard["complete"] and zero["complete"] else ", cut"),
          None if r is None else r <= LOSS_TIME and hard["complete"] and zero["complete"])
    rx, tx = ends(hard or {})
    for what, lost in (("it declared lost", tx.get("lost_bytes")), ("the proxy dropped", dropped_c2s(hard or {})[1])):
        r = ratio(tx.get("resent"), lost) if hard else None
        check("proxy, 20%%: resent <= %gx the bytes %s" % (RESENT_TIMES, what),
              "-" if not hard else "%s (%s / %s B)" % (fmt(r, "%.2fx"), fmt(tx.get("resent"), "%d"), fmt(lost, "%d")),
              None if not hard else (tx.get("resent") or 0) <= RESENT_TIMES * (lost or 0))
    memory = report.get("memory")
    peaks = peak_mb(memory) if memory else {}
    top = max((v for v in peaks.values() if v is not None), default=None)
    check("memory: each end's peak < %d MB over %s" % (RSS_TARGET_MB, human_size(report["config"]["memory_size"])),
          "-" if not memory else "receiver %s / sender %s MB%s" % (
              fmt(peaks["receiver"], "%.1f"), fmt(peaks["sender"], "%.1f"), "" if memory["complete"] else ", cut"),
          None if top is None else top < RSS_TARGET_MB and memory["complete"])
    return out


def notes(report) -> list:
    return ["%s not run: %s" % (name, why) for name, why in report["skipped"].items()]


def table(report) -> str:
    cfg = report["config"]
    raw = report["loopback"].get("raw")
    lines = [
        "p2pd UDP benchmark: bulk bytes between two processes on 127.0.0.1, timed by the receiver (first byte to "
        "last); MB = 10^6 bytes, Mbit = 10^6 bits",
        "p2pd at %s; %d CPU cores, load average %s at the start; net.core.rmem_max %s" % (
            report["revision"], report["cores"], "/".join("%.2f" % x for x in report["load_average"]),
            report["rmem_max"]),
        "",
        "loopback, %s each way:" % human_size(cfg["size"]),
        "%-40s %10s %8s %9s %11s %8s %7s %9s  %s" % ("contender", "arrived", "s", "MB/s", "datagrams/s", "% of (a)",
                                                     "lost", "RSS rx/tx", "CPU % of a core"),
    ]
    for name, row in report["loopback"].items():
        peaks = peak_mb(row)
        lines.append("%-40s %10s %8.3f %9.1f %11s %8s %7s %9s  %s" % (
            cfg["titles"][name] + ("" if row["complete"] else " (cut)"), human_size(row["bytes"]), row["seconds"],
            row["MBps"] or 0, fmt(row.get("datagrams_per_s"), "%d"),
            fmt(100 * row["MBps"] / raw["MBps"] if raw and raw["MBps"] and row["MBps"] else None, "%.1f%%"),
            fmt(row.get("lost_share") and 100 * row["lost_share"], "%.1f%%") if "lost_share" in row else
            fmt((row["sender"] or {}).get("lost_packets"), "%d pkts"),
            "%s/%s" % (fmt(peaks["receiver"], "%.0f"), fmt(peaks["sender"], "%.0f")), cpu_text(row["cpu_percent"])))
    if report["lossy"]:
        lines += lossy_lines(report)
    streams = [("loopback", report["loopback"]["stream"])] if "stream" in report["loopback"] else []
    streams += [("%g%% loss" % (100 * float(loss)), rows["stream"]) for loss, rows in report["lossy"].items()
                if "stream" in rows]
    if report.get("memory"):
        streams.append(("memory run", report["memory"]))
    if streams:
        lines += ["", "the stream's own counters (sender: resent stream bytes, what it declared lost, probe timeouts; "
                  "receiver: duplicate stream bytes, forged / replayed datagrams):",
                  "%-11s %11s %15s %15s %9s %9s %5s %10s %7s %11s" % (
                      "run", "resent B", "declared lost B", "proxy drop B", "/ lost", "/ dropped", "ptos", "dup B",
                      "f / r", "RSS rx/tx")]
        for label, row in streams:
            rx, tx = ends(row)
            drops = dropped_c2s(row)
            peaks = peak_mb(row)
            lines.append("%-11s %11s %15s %15s %9s %9s %5s %10s %7s %11s" % (
                label, fmt(tx.get("resent"), "%d"), "%s (%s)" % (fmt(tx.get("lost_bytes"), "%d"),
                                                                  fmt(tx.get("lost_packets"), "%d")),
                "-" if drops[0] is None else "%d (%d)" % (drops[1], drops[0]),
                fmt(ratio(tx.get("resent"), tx.get("lost_bytes")), "%.2fx"), fmt(ratio(tx.get("resent"), drops[1]),
                                                                                  "%.2fx"),
                fmt(tx.get("ptos"), "%d"), fmt(rx.get("duplicate"), "%d"),
                "%s / %s" % (fmt(rx.get("forged"), "%d"), fmt(rx.get("replayed"), "%d")),
                "%s / %s" % (fmt(peaks["receiver"], "%.1f"), fmt(peaks["sender"], "%.1f"))))
    memory = report.get("memory")
    if memory:
        halves = memory.get("rss_halves_mb") or {}
        lines += ["", "memory run: %s over the stream on loopback in %.2f s (%.1f MB/s)%s; sampled VmRSS peak in the "
                  "first / second half of the run: %s" % (
                      human_size(memory["bytes"]), memory["seconds"], memory["MBps"] or 0,
                      "" if memory["complete"] else " (cut)",
                      ", ".join("%s %s / %s MB" % (k, fmt(v[0], "%.1f"), fmt(v[1], "%.1f")) for k, v in halves.items()))]
    if report["loopback"]:
        lines.append("datagrams the kernel dropped for a full receive buffer during each row (RcvbufErrors, the "
                     "whole machine's): %s" % ", ".join("%s %s" % (name, fmt(row.get("rcvbuf_errors"), "%d"))
                                                       for name, row in report["loopback"].items()))
    lines.append("(raw rows: no reliability, 'lost' is the share of sent datagrams that never arrived; aioquic's "
                 "and the stream's 'lost' is packets they declared lost; 'dropped' is what the proxy dropped, both ways: "
                 "at random (L) and for its full queue (Q); RSS: each end's peak, MB)")
    return "\n".join(lines + procs.verdict_lines(report, "issue 14's targets:", (58, 44)))


def lossy_lines(report) -> list:
    cfg = report["config"]
    link_mbps = 8 * cfg["link_rate"] / MB
    lines = ["", "through lossy_proxy.py: 10 Mbit/s and 15 ms each way, 64 KiB queue, random loss in both "
             "directions (seed 1), %s each, cut at %d s:" % (human_size(cfg["lossy_size"]), cfg["max_seconds"]),
             "%-6s %-40s %10s %8s %8s %7s %9s %10s %14s  %s" % (
                 "loss", "contender", "arrived", "s", "Mbit/s", "% link", "% of 0%", "lost pkts", "dropped L / Q",
                 "CPU % of a core")]
    base = report["lossy"].get("0", {})
    for loss, rows in report["lossy"].items():
        for name, row in rows.items():
            zero = base.get(name, {}).get("Mbps")
            drops = [(row.get("proxy") or {}).get(d, {}).get("dropped", {}) for d in ("c2s", "s2c")]
            lines.append("%-6s %-40s %10s %8.2f %8.3f %7.1f %9s %10s %14s  %s" % (
                "%g%%" % (100 * float(loss)), cfg["titles"][name] + ("" if row["complete"] else " (cut)"),
                human_size(row["bytes"]), row["seconds"], row["Mbps"] or 0, 100 * (row["Mbps"] or 0) / link_mbps,
                fmt(100 * row["Mbps"] / zero if zero and row["Mbps"] else None, "%.1f%%"),
                fmt((row["sender"] or {}).get("lost_packets"), "%d"),
                "%d / %d" % tuple(sum(d.get(cause, 0) for d in drops) for cause in ("loss", "queue")),
                cpu_text(row["cpu_percent"])))
    if any("stream" in rows for rows in report["lossy"].values()):
        lines += ["", "goodput through the proxy, the stream beside aioquic (Mbit/s, seconds):",
                  "%-6s %18s %18s %10s" % ("loss", "stream", "aioquic", "x aioquic")]
        for loss, rows in report["lossy"].items():
            stream, quic = rows.get("stream"), rows.get("aioquic")
            lines.append("%-6s %18s %18s %10s" % (
                "%g%%" % (100 * float(loss)),
                *("-" if r is None else "%.3f (%.2f s)%s" % (r["Mbps"] or 0, r["seconds"], "" if r["complete"] else
                                                              " cut") for r in (stream, quic)),
                fmt(ratio(stream and stream["Mbps"], quic and quic["Mbps"]), "%.1fx")))
    return lines
