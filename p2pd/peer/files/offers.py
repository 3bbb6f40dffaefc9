"""What a sender offers and what a receiver checks of an offer: pure functions of paths and item lists (the
sender's walk reads the file system, nothing else here does I/O)."""

import hashlib
import json
import os
import stat

from p2pd.core import filenames, images, wire
from p2pd.errors import BadRequest
from p2pd.peer.files.errors import FileProblem


def new_id():
    return os.urandom(16).hex()


def fingerprint(items) -> str:
    canon = json.dumps([[i["path"], i["size"], i["hash"]] for i in items], separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def view(record, done, rate, eta, elapsed, inbox=None) -> dict:
    """What the control socket shows of a transfer (running: :meth:`Transfer.snapshot`; finished: its record):
    the first 20 names and sizes, and for an incoming one the *inbox* its ``saved`` names are relative to; if
    some of them are images, ``images`` (one per name: the facts of :mod:`.previews`, or None) and the indices
    of the files that have a ``preview``."""
    shown = {"tid": record["tid"], "direction": record["direction"], "peer": record["peer"],
             "status": record["status"], "names": [i["path"] for i in record["items"]][:20],
             "sizes": [i["size"] for i in record["items"]][:20],
             "files": len(record["items"]), "bytes": record["total"], "done": done, "rate": rate, "eta": eta,
             "elapsed": elapsed, "transport": record.get("transport") or "tcp"}
    if inbox is not None and record["direction"] == "in":
        shown["inbox"] = inbox
    images = [i.get("checked") or i.get("image") for i in record["items"][:20]]  # what we found, else were told
    if any(images):
        shown.update(images=images, previews=record.get("previews") or [])
    return shown


def check_transport(transport):
    if transport not in wire.TRANSPORTS:
        raise BadRequest("'transport' must be one of %s" % ", ".join(wire.TRANSPORTS))
    return transport


def is_image(path) -> bool:
    """Whether the file at *path* is a PNG, JPEG, GIF or WEBP by its first bytes (not by its name)."""
    try:
        with open(path, "rb") as f:
            return images.sniff(f.read(images.SNIFF_BYTES)) is not None
    except OSError:
        return False


def choose_transport(asked, paths, link):
    """The transport of a send: the one *asked* for, else the UDP stream for images (when every file is one)
    and TCP for the rest. UDP needs a peer that said where its UDP streams listen."""
    udp = bool(getattr(link, "peer_udp_port", None))
    if asked == "udp" and not udp:
        raise FileProblem("%s takes no UDP streams (an older p2pd?); send over TCP" % link.peer, code="no_udp")
    if asked is not None:
        return asked
    return "udp" if udp and paths and all(is_image(p) for p in paths) else "tcp"


def tops(paths):
    """``[(given, absolute path, offered name), ...]``: the name each of *paths* is offered under (what
    :func:`~p2pd.core.filenames.sender_name` makes of its base name, numbered if two are alike)."""
    out, seen = [], set()
    for given in paths:
        path = os.path.abspath(given)
        top = filenames.sender_name(os.path.basename(path.rstrip("/")) or "file")
        n, candidate = 0, top
        while candidate.casefold() in seen:
            n += 1
            candidate = filenames.numbered(top, n)
        seen.add(candidate.casefold())
        out.append((given, path, candidate))
    return out


def renamed(paths):
    """``[[local name, offered name], ...]`` for each of *paths* offered under another name (``.bashrc`` as
    ``bashrc``: hidden and unsafe names are not offered as they are), so that the sender can say so."""
    return [[os.path.basename(path.rstrip("/")), top] for _, path, top in tops(paths)
            if os.path.basename(path.rstrip("/")) != top]


def collect(paths):
    """``(entries, skipped)``: entries are ``(offer path, absolute local path)`` for every regular file in
    *paths* (directories walked; their hidden/unsafe names, links and special files skipped and counted)."""
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise BadRequest("'paths' must be a non-empty list of file names")
    entries, skipped = [], 0
    for given, path, candidate in tops(paths):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileProblem("no such file or directory: %s" % given, code="file_missing") from None
        except OSError as e:
            raise FileProblem("cannot read %s: %s" % (given, e.strerror), code="file_unreadable") from None
        if stat.S_ISREG(st.st_mode):
            _check_readable(path, given)
            entries.append((candidate, path))
        elif stat.S_ISDIR(st.st_mode):
            skipped += _walk(path, candidate, entries)
        else:
            raise FileProblem("%s is not a regular file or a directory" % given, code="file_unreadable")
        if len(entries) > wire.MAX_ITEMS:
            raise FileProblem("too many files for one send (more than %d); send the folder in parts or as an "
                              "archive" % wire.MAX_ITEMS, code="too_many_files")
    if not entries:
        raise FileProblem("nothing to send: no regular files (%d hidden or unsupported entries skipped)" % skipped,
                          code="file_missing")
    return entries, skipped


def _check_readable(path, given):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as e:
        raise FileProblem("cannot read %s: %s" % (given, e.strerror), code="file_unreadable") from None


def _walk(root, top, entries):
    skipped = 0
    for dirpath, dirnames, files in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        prefix = top if rel == "." else top + "/" + rel.replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            if filenames.is_hidden_or_unsafe(d) or os.path.islink(os.path.join(dirpath, d)):
                skipped += 1
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            offer = prefix + "/" + f
            try:
                st = os.lstat(full)
                filenames.check_relpath(offer)
            except (OSError, filenames.BadFileName):
                skipped += 1
                continue
            if not stat.S_ISREG(st.st_mode) or filenames.is_hidden_or_unsafe(f):
                skipped += 1
                continue
            _check_readable(full, full)
            entries.append((offer, full))
            if len(entries) > wire.MAX_ITEMS:
                return skipped
    return skipped


def check_offer(items):
    """The validated landing components of each offered item; :class:`filenames.BadFileName` if any name is
    unsafe, or if two items collide (the same path ignoring case, or a file that is also a folder)."""
    paths, seen, dirs = [], set(), set()
    for item in items:
        parts = tuple(filenames.safe_component(c) for c in filenames.check_relpath(item["path"]))
        key = "/".join(parts).casefold()
        if key in seen or key in dirs:
            raise filenames.BadFileName("refused file name %r: offered twice" % item["path"])
        seen.add(key)
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i]).casefold()
            if prefix in seen:
                raise filenames.BadFileName("refused file name %r: a file and a folder share a name"
                                            % item["path"])
            dirs.add(prefix)
        paths.append(parts)
    return paths
