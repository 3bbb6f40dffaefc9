"""Push: what a ``send`` does before the bytes move: walk and hash the files (hashes cached by inode and mtime),
make the offer, and wait for the receiver's answer."""

import base64
import os

from p2pd.core import filehash, wire
from p2pd.core.clock import now_ms
from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, P2PDError
from p2pd.peer.files import states
from p2pd.peer.files.engine import check_have
from p2pd.peer.files.errors import FileProblem, TransferError
from p2pd.peer.files.offers import check_transport, choose_transport, collect, fingerprint, new_id, renamed
from p2pd.peer.files.previews import fit
from p2pd.peer.files.sessions import SendSession
from p2pd.peer.files.transfer import Outgoing

REFUSALS = ("denied", "no_space", "offer_too_large", "bad_name", "busy", "expired")


class Push:
    """Our offers; part of *manager*."""

    def __init__(self, manager):
        self.m = manager

    async def send(self, to, paths, progress, rid, link, handle, transport=None):
        """Hash *paths*, offer them to *to* and send them once accepted; ``handle["tid"]`` names the
        transfer once it exists."""
        to = canonical_name(to)
        if to == self.m.name:
            raise BadRequest("you cannot send files to yourself")
        if transport is not None:
            check_transport(transport)
        entries, skipped = collect(paths)
        t0 = self.m.clock.seconds()
        items, local, stats, digests = [], [], [], []
        for number, (offer_path, path) in enumerate(entries, 1):
            st = os.stat(path)
            if progress is not None:  # what the sender waits for before the offer goes: "hashing a.bin (3 of 9)"
                progress({"phase": "hashing", "name": offer_path, "file": number, "files": len(entries),
                          "done": sum(i["size"] for i in items), "bytes": None})
            cached = self.m.storage.cached_hash(path, st)
            if cached is None:
                try:
                    root, digest_list, _ = await self.m.threads.run(filehash.hash_file, path, st.st_size)
                except OSError as e:
                    raise FileProblem("cannot read %s: %s" % (path, e.strerror or e), code="file_unreadable") \
                        from None
                self.m.storage.put_hash(path, st, root, digest_list)
                self.m.commits.schedule_flush()
            else:
                root, digest_list = cached
            items.append({"path": offer_path, "size": st.st_size, "hash": root})
            local.append(path)
            stats.append((st.st_size, st.st_mtime_ns))
            digests.append(digest_list)
        hash_seconds = round(self.m.clock.seconds() - t0, 3)
        described = await self.m.previews.describe(local)  # the images among the files, and their previews
        if link is None:
            link = await self.m.dialer.dial(to)
        transport = choose_transport(transport, local, link)
        record = {"tid": new_id(), "direction": "out", "peer": to, "status": states.OFFERED,
                  "fingerprint": fingerprint(items), "items": items, "total": sum(i["size"] for i in items),
                  "local": local, "kind": "pull" if rid else "push", "rid": rid, "saved": None, "error": None,
                  "created": now_ms(self.m.clock), "hash_seconds": hash_seconds, "skipped": skipped,
                  "renamed": renamed(paths), "transport": transport}
        out = Outgoing(self.m, record, local, stats, digests)
        handle["tid"] = out.tid
        out.link = link
        if progress is not None:
            out.watchers.append(progress)
            progress(dict(out.snapshot(), phase="waiting"))  # for the receiver's answer
        self.m.live[out.tid] = out
        out.save()
        self.m.event(out)
        frame = {"t": "offer", "tid": out.tid, "items": items, "transport": transport}
        if rid:
            frame["rid"] = rid
        fit(frame, described)
        if len(wire.encode(frame)) >= wire.MAX_LINE:
            out.fail(FileProblem("the list of files is too long for one offer; send fewer files at once",
                                 code="too_many_files"))
            return await out.result
        link.send(frame)
        out.tell(out.snapshot())
        try:
            accepted = await out.answer
        except P2PDError as e:
            out.finish(states.REJECTED if e.code in ("rejected",) + REFUSALS else
                       states.CANCELLED if e.code == "cancelled" else states.FAILED, e)
            return await out.result
        have = accepted["have"]
        if not check_have(have, items):
            out.fail(TransferError("%s answered the offer with bad offsets" % to, code="bad_frame"))
            return await out.result
        out.record["resumed_from"] = sum(have)
        session = SendSession(out, base64.urlsafe_b64decode(accepted["secret"] + "="), have, self.m.clock)
        self.m.start_session(out, session, link)
        return await out.result
