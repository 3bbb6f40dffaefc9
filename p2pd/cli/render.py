"""How daemon results and events look to people. Every string that came from the network goes through
:func:`~p2pd.cli.sanitize.clean`; these functions never print, they return lines."""

import mimetypes
import os
import time

from p2pd.cli.sanitize import clean, table
from p2pd.core.sizes import human_size

OUT_MARKS = {"pending": " (not delivered yet)", "queued": " (in the mailbox, not collected yet)", "failed": " (failed)"}


def clock(ms, date=False) -> str:
    try:
        t = time.localtime(float(ms) / 1000)
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", t)


def yes(value) -> str:
    return "yes" if value else "no"


def message_line(msg, date=False, recipient=False) -> str:
    """``[time] sender: text``; with *recipient*, ``[time] sender -> recipient: text`` (or ``#room``)."""
    if not isinstance(msg, dict):
        return clean(msg)
    if msg.get("kind") == "file":
        return "[%s] %s" % (clock(msg.get("ts"), date), file_line(msg) or "%s: %s" % (
            clean(msg.get("peer")), clean(msg.get("status"))))
    who = clean(msg.get("sender"))
    if msg.get("room"):
        who = "#%s %s" % (clean(msg["room"]), who)
    elif recipient and msg.get("recipient"):
        who = "%s -> %s" % (who, clean(msg["recipient"]))
    mark = OUT_MARKS.get(msg.get("status"), "") if msg.get("direction") == "out" else ""
    if mark and msg.get("status") == "failed" and msg.get("reason"):
        mark = " (failed: %s)" % clean(msg["reason"])
    return "[%s] %s: %s%s" % (clock(msg.get("ts"), date), who, clean(msg.get("body")), mark)


def event_line(event, now_ms) -> str:
    """One line per event, prefixed with the time."""
    kind = event.get("event")
    stamp = "[%s]" % clock(now_ms)
    if kind == "message":
        msg = event.get("message")
        if isinstance(msg, dict) and msg.get("direction") == "in":
            if msg.get("room"):
                return "%s In group %s, %s: %s" % (stamp, clean(msg["room"]), clean(msg.get("sender")),
                                                   clean(msg.get("body")))
            return "%s Private message from %s: %s" % (stamp, clean(msg.get("sender")), clean(msg.get("body")))
        return message_line(msg, recipient=True)
    if kind == "room":
        return "%s %s %s %s" % (stamp, clean(event.get("name")), clean(event.get("change")), clean(event.get("room")))
    if kind == "delivered":
        return "%s delivered to %s (%s), message %s" % (stamp, clean(event.get("to")), clean(event.get("via")),
                                                        short_id(event.get("id")))
    if kind == "queued":
        return "%s queued for %s: %s, message %s" % (stamp, clean(event.get("to")), clean(event.get("reason")),
                                                     short_id(event.get("id")))
    if kind == "failed":
        return "%s failed to deliver to %s: %s, message %s" % (stamp, clean(event.get("to")),
                                                               clean(event.get("reason")), short_id(event.get("id")))
    if kind == "peer":
        return "%s %s is %s" % (stamp, clean(event.get("name")), clean(event.get("state")))
    if kind == "quarantined":
        return "%s a mailbox message from %s could not be delivered and was set aside: %s (p2pctl quarantine)" % (
            stamp, clean(event.get("from") or "?"), clean(event.get("reason")))
    if kind == "registry":
        line = "%s registry %s" % (stamp, clean(event.get("state")))
        return line + (": " + clean(event["message"]) if event.get("message") else "")
    if kind == "transfer":
        return "%s %s" % (stamp, transfer_line(event))
    if kind == "image":
        return "%s %s from %s, saved as %s: %s" % (stamp, clean(event.get("name")), clean(event.get("peer")),
                                                  saved_where(dict(event, saved=[event.get("saved")])) or "?",
                                                  image_text(event))
    rest = " ".join("%s=%s" % (clean(k), clean(v)) for k, v in event.items() if k != "event")
    return "%s %s %s" % (stamp, clean(kind), rest)


SHOWN_NAMES = 3  # names an offer shows before "and N more"


def offer_summary(t, types=False) -> str:
    """What a transfer holds, for people deciding on it: ``report.pdf (2.1 MiB)``, or ``a.txt (10 B), b.png
    (3.0 MiB), c.pdf (1.2 MiB) and 2 more: 5 files, 12.4 MiB``; with *types*, each file's type too."""
    names = [n for n in (t.get("names") or []) if isinstance(n, str)]
    sizes = t.get("sizes") or []
    count = t.get("files") or len(names)
    shown = []
    for i, name in enumerate(names[:SHOWN_NAMES]):
        about = [human_size(sizes[i])] if i < len(sizes) and isinstance(sizes[i], int) else []
        if types:
            about.append(mimetypes.guess_type(name)[0] or "data")
        shown.append("%s (%s)" % (clean(name), ", ".join(about)) if about else clean(name))
    if not shown:
        return "%d files, %s" % (count, human_size(t.get("bytes")))
    text = ", ".join(shown)
    if count > len(shown):
        text += " and %d more" % (count - len(shown))
    if count > 1:
        text += ": %d files, %s" % (count, human_size(t.get("bytes")))
    return text


def image_text(facts) -> str:
    """One file's image facts for people: ``JPEG 4032x3024``; once checked, ``JPEG 4032x3024, checked: a valid
    image``, ``PNG 640x480: not a valid image: ...``, ``PNG: refused to decode: too large ...``; "" if none."""
    if not isinstance(facts, dict):
        return ""
    text = clean(facts.get("format") or "image")
    if isinstance(facts.get("width"), int) and isinstance(facts.get("height"), int):
        text += " %dx%d" % (facts["width"], facts["height"])
    check = facts.get("check")
    if check == "ok":
        return text + ", checked: a valid image"
    if check in ("invalid", "refused", "unchecked"):
        return text + ": %s%s" % ({"refused": "refused to decode: ", "unchecked": "not checked: "}.get(check, ""),
                                  clean(facts.get("problem")))
    if facts.get("error"):
        return text + ": the sender could not read it: %s" % clean(facts["error"])
    return text


def image_lines(t, most=SHOWN_NAMES) -> list:
    """A line for each of the first *most* images of transfer *t*: ``photo.jpg  JPEG 4032x3024  (preview: p2pctl
    preview 1a2b3c4d)`` (the preview only for an offer to us), and how many more there are."""
    names, entries = t.get("names") or [], t.get("images") or []
    previews = [i for i in t.get("previews") or [] if isinstance(i, int)] if t.get("direction") == "in" else []
    found = [(i, facts) for i, facts in enumerate(entries) if isinstance(facts, dict)]
    lines = []
    for i, facts in found[:most]:
        line = "%s  %s" % (clean(names[i]) if i < len(names) else "file %d" % (i + 1), image_text(facts))
        if i in previews:
            line += "  (preview: p2pctl preview %s%s)" % (clean(t.get("tid"))[:8],
                                                         "" if i == previews[0] else " --file %d" % (i + 1))
        lines.append(line)
    if len(found) > most:
        lines.append("and %d more image%s" % (len(found) - most, "s" if len(found) - most > 1 else ""))
    return lines


def saved_where(t) -> str:
    """Where an incoming transfer's files are, as full paths: ``/home/bob/inbox/report.pdf``, or ``3 files in
    /home/bob/inbox (report (1).pdf, ...)``; "" if nothing is saved yet."""
    saved = [s for s in (t.get("saved") or []) if isinstance(s, str) and s]
    inbox = t.get("inbox")
    if not saved:
        return ""
    full = [os.path.join(inbox, s) if isinstance(inbox, str) else s for s in saved]
    if len(full) == 1:
        return clean(full[0])
    tops = sorted({s.split("/")[0] for s in saved})
    where = clean(inbox) if isinstance(inbox, str) else "the inbox"
    return "%d files in %s (%s)" % (len(saved), where, ", ".join(clean(x) for x in tops[:SHOWN_NAMES])
                                    + (", ..." if len(tops) > SHOWN_NAMES else ""))


def file_line(t, me="you") -> str:
    """A file transfer as the conversation shows it, once it is done or waits for us: ``alice sent you
    report.pdf (2.1 MiB), saved as /home/bob/inbox/report.pdf``, ``you sent bob report.pdf (2.1 MiB)``,
    ``alice offers report.pdf (2.1 MiB): p2pctl accept 3f2a``; "" for other states."""
    peer, status, incoming = clean(t.get("peer")), t.get("status"), t.get("direction") == "in"
    if status == "done":
        if incoming:
            where = saved_where(t)
            return "%s sent %s %s%s" % (peer, me, offer_summary(t), ", saved as " + where if where else "")
        return "%s sent %s %s" % (me, peer, offer_summary(t))
    if status == "offered" and incoming:
        return "%s offers %s: p2pctl accept %s" % (peer, offer_summary(t, types=True), clean(t.get("tid"))[:8])
    return ""


def transfer_line(event) -> str:
    """A transfer event: an offer waiting for consent, or a change of a transfer's state."""
    names = event.get("names") or []
    what = clean(names[0]) if len(names) == 1 else "%d files" % (event.get("files") or len(names))
    peer = clean(event.get("peer"))
    tid = clean(event.get("tid"))
    status = event.get("status")
    incoming = event.get("direction") == "in"
    if incoming and status == "offered":
        return "; ".join(["%s offers %s: p2pctl accept %s, or p2pctl reject %s" % (
            peer, offer_summary(event, types=True), tid[:8], tid[:8])] + image_lines(event))
    if status == "refused":
        return "refused an offer from %s: %s" % (peer, clean((event.get("error") or {}).get("message")))
    line = "%s %s %s: %s" % (what, "from" if incoming else "to", peer, clean(status))
    if status == "done" and incoming and saved_where(event):
        line += ", saved as %s" % saved_where(event)
    if event.get("error"):
        line += " (%s)" % clean((event.get("error") or {}).get("message"))
    return line


def addresses(value) -> str:
    if isinstance(value, list):
        return ", ".join(clean(a) for a in value) or "-"
    return clean(value) if value else "-"


def short_fingerprint(value) -> str:
    """The first 16 digits of a fingerprint such as ``sha256:0f3a...``, enough to tell peers apart."""
    if not isinstance(value, str) or not value:
        return "-"
    return clean(value.split(":", 1)[-1][:16])


def short_id(value) -> str:
    return clean(value)[:8] if value else "?"


def status_lines(status) -> list:
    registry = status.get("registry") or {}
    addrs = status.get("addresses") or {}
    links = status.get("links") or []
    rows = [
        ("name", clean(status.get("name"))),
        ("fingerprint", clean(status.get("fingerprint"))),
        ("data dir", clean(status.get("data_dir"))),
        ("tcp", addresses(addrs.get("tcp"))),
        ("udp", addresses(addrs.get("udp"))),
        ("public", addresses(addrs.get("public"))),
        ("registry", "%s (%s)%s" % (clean(registry.get("url")), clean(registry.get("state")),
                                    ": " + clean(registry["message"]) if registry.get("message") else "")),
        ("queued", "%s message(s) waiting to be delivered" % clean(status.get("outbox", 0))),
        ("in mailbox", "%s message(s) in a registry mailbox, not collected yet" % clean(status.get("in_mailbox", 0))),
        ("links", ", ".join("%s (%s since %s)" % (clean(l.get("peer")), clean(l.get("direction")),
                                                    clock(l.get("since")))
                            for l in links if isinstance(l, dict)) or "none"),
        ("version", clean(status.get("version"))),
    ]
    udp = status.get("udp_streams")
    if isinstance(udp, dict) and any(udp.get(k) for k in ("open", "forged", "replayed", "malformed")):
        rows.insert(9, ("udp streams", "%s open; dropped %s forged, %s replayed, %s malformed datagram(s)" % tuple(
            clean(udp.get(k, 0)) for k in ("open", "forged", "replayed", "malformed"))))
    if status.get("quarantined"):
        rows.insert(9, ("quarantined", "%s mailbox message(s) set aside: p2pctl quarantine" %
                        clean(status["quarantined"])))
    return ["%-12s %s" % (key + ":", value) for key, value in rows]


def peers_lines(peers) -> list:
    """The peers table; the entry marked ``self`` (``users`` lists us too) says "(you)"."""
    if not peers:
        return ["no other peer is online"]
    rows = []
    for p in peers:
        if not isinstance(p, dict):
            continue
        rows.append((clean(p.get("name")) + (" (you)" if p.get("self") is True else ""),
                     addresses(p.get("tcp")), addresses(p.get("udp")),
                     short_fingerprint(p.get("fingerprint")), clean(p.get("version")) or "-"))
    rows.sort(key=lambda r: r[0])
    return table(("NAME", "TCP", "UDP", "FINGERPRINT", "VERSION"), rows)


def whois_lines(record) -> list:
    reach = record.get("reachability") or {}
    rows = [
        ("name", clean(record.get("name"))),
        ("online", yes(record.get("online"))),
        ("fingerprint", clean(record.get("fingerprint"))),
        ("tcp", addresses(record.get("tcp"))),
        ("udp", addresses(record.get("udp"))),
        ("seen from", clean(record.get("observed")) or "-"),
        ("version", clean(record.get("version")) or "-"),
        ("link", clean(reach.get("link")) or "none"),
        ("direct", yes(reach.get("direct"))),
    ]
    if "pin_matches" in reach:
        rows.append(("key", "pinned, matches" if reach.get("pinned") and reach.get("pin_matches")
                     else "KEY CHANGED: does not match the pinned key" if reach.get("pinned")
                     else "not pinned yet"))
    if reach.get("queued"):
        rows.append(("queued", "%s message(s) waiting" % clean(reach["queued"])))
    if reach.get("last_error"):
        rows.append(("last error", clean(reach["last_error"])))
    return ["%-12s %s" % (key + ":", value) for key, value in rows]
