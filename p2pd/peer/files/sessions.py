"""The data session of one transfer, each direction an :class:`~p2pd.peer.interfaces.IStreamReceiver` over an
:class:`~p2pd.peer.interfaces.IByteStream`: which path carries the bytes (TCP today) is not known here.

A session does the I/O around the rules of :mod:`.engine`: :class:`SendSession` reads the files and seals
their records, :class:`ReceiveSession` opens records and hands their bytes to a :class:`.DiskWriter`."""

import base64
import os

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from p2pd.core import datastream, filehash
from p2pd.errors import P2PDError
from p2pd.peer.files.diskwriter import DiskWriter
from p2pd.peer.files.engine import END, FINISH, OPEN, ReceiveRules, SendPlan
from p2pd.peer.files.errors import FileProblem, LocalProblem, TransferError, peer_code, peer_text, write_error
from p2pd.peer.interfaces import IStreamReceiver
from p2pd.peer.timers import Timer

log = Logger()

DATA_TIMEOUT = 30.0  # seconds to set up a data path, and of silence on one before it is dropped
TURN_BYTES = 4 << 20  # bytes a sender produces in one reactor turn before letting others run
JOURNAL_EVERY = 32 << 20  # verified bytes between two journal writes


@implementer(IStreamReceiver)
class Session:
    """A data session of one transfer; *transfer* is the Outgoing or Incoming it works for. ``done`` is set
    before the session ends its transfer, so that the stream's loss that follows is not taken for an
    interruption."""

    def __init__(self, transfer, secret, clock):
        self.transfer = transfer
        self.clock = clock
        self.keys = datastream.SessionKeys(secret)
        self.preamble = self.keys.preamble
        self.opener = None
        self.stream = None
        self.timer = Timer(clock, DATA_TIMEOUT, self.timed_out)  # silence on the path (or no path yet)
        self.closing = Timer(clock, DATA_TIMEOUT, self._close_timed_out)  # the limit on a graceful close
        self.done = False

    def arm(self):
        self.timer.arm()

    def disarm(self):
        self.timer.cancel()

    def timed_out(self):
        self.done = True
        self.transfer.interrupted("no data for %d s" % DATA_TIMEOUT)
        self.close(abort=True)

    def close(self, abort=False):
        self.disarm()
        if self.stream is not None and not self.stream.closed:
            self.stream.close(abort)
            if not abort and not self.closing.active:
                # waits until what is queued is sent: a peer that stops reading would hold it open for ever
                self.closing.arm()

    def _close_timed_out(self):
        self.close(abort=True)

    def end(self, why, tell=None):
        """Stop the session from outside (a cancel, the daemon stopping): abort its stream, or with *tell* (a
        TransferError) send the peer that as a ``fail`` record first and close it after it."""
        self.done = True
        if tell is not None:
            self.tell_peer(tell)
        self.close(abort=tell is None)

    # IStreamReceiver

    def stream_started(self, stream):
        self.stream = stream
        self.transfer.started_data()
        self.arm()

    def stream_arrived(self):
        self.arm()
        self.handle(self.opener.records())

    def stream_moving(self):
        self.arm()

    def stream_lost(self, reason):
        self.disarm()
        self.closing.cancel()
        if self.opener is not None:
            self.opener.release()  # a finished transfer is kept for the listing; its buffers are not
        if not self.done:
            self.transfer.interrupted("the data connection closed")

    def tell_peer(self, error):
        """Send the peer a ``fail`` record for *error* (if the stream is still there)."""
        if self.stream is not None and not self.stream.closed:
            self.stream.write(self.sealer.json({"t": "fail", "code": error.code, "message": error.message}))


@implementer(IPushProducer)
class SendSession(Session):
    """Streams the files of an outgoing transfer from the offsets the receiver already verified.

    A push producer over its stream: each chunk is read into one reused buffer, sealed into one reused record
    buffer and written; the stream pauses the session while it holds part of a record, and both buffers are
    used again only once it is resumed."""

    def __init__(self, transfer, secret, have, clock):
        super().__init__(transfer, secret, clock)
        self.plan = SendPlan([i["size"] for i in transfer.items], have)
        self.fd = None
        self.paused = True
        self.scheduled = None
        self.finished_sending = False
        self.plain = self.record = None

    def stream_started(self, stream):
        self.sealer = datastream.Sealer(self.keys.to_receiver)
        self.opener = datastream.Opener(self.keys.to_sender)
        self.plain = bytearray(datastream.CHUNK)
        self.record = bytearray(datastream.STANDARD)
        super().stream_started(stream)
        stream.registerProducer(self, True)
        self.resumeProducing()

    # IPushProducer
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.scheduled is None and not self.finished_sending:
            self.scheduled = self.clock.callLater(0, self.produce)

    def stopProducing(self):
        self.paused = True
        self._close_file()

    def produce(self):
        self.scheduled = None
        if self.plain is None:  # the stream is gone
            return
        self.arm()  # bytes are moving: the silence timer starts again
        budget = TURN_BYTES
        stream, plan, transfer = self.stream, self.plan, self.transfer
        write = stream.write
        plain = memoryview(self.plain)
        try:
            while not self.paused and not self.done and not self.finished_sending and not stream.closed:
                step, index, n = plan.next()
                if step is OPEN:
                    self._open(index)
                    write(self.sealer.json({"t": "file", "i": index,
                                            "d": base64.b64encode(transfer.digests[index]).decode()}))
                elif step is END:
                    self._check_unchanged(index)
                    self._close_file()
                    write(self.sealer.end(index))
                elif step is FINISH:
                    write(self.sealer.finish())
                    self.finished_sending = True
                    stream.unregisterProducer()
                else:
                    n = os.preadv(self.fd, [plain[:n]], plan.position)
                    plan.read(n, transfer.local[index])
                    write(self.sealer.data_into(plain[:n], self.record))
                    transfer.progress(n)
                    budget -= n
                    if budget <= 0:
                        if not self.paused:
                            self.scheduled = self.clock.callLater(0, self.produce)
                        break
        except (OSError, P2PDError) as e:
            self._close_file()
            error = e if isinstance(e, P2PDError) else FileProblem(
                "cannot read %s: %s" % (transfer.local[plan.index], e.strerror), code="file_unreadable")
            self.done = True
            self.tell_peer(error)
            self.close()
            transfer.fail(error)

    def _open(self, index):
        path = self.transfer.local[index]
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise FileProblem("cannot read %s: %s" % (path, e.strerror), code="file_unreadable") from None
        self._check_unchanged(index)

    def _check_unchanged(self, index):
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns) != self.transfer.stats[index]:
            raise FileProblem("%s changed while it was being sent; send it again" % self.transfer.local[index],
                              code="file_changed")

    def _close_file(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def handle(self, records):
        try:
            for kind, obj in records:
                if kind != datastream.JSON:
                    raise datastream.StreamError("unexpected record from the receiver")
                if obj.get("t") == "complete":
                    self.done = True
                    self.close()
                    saved = obj.get("saved")
                    self.transfer.complete(saved if isinstance(saved, list) else [])
                    return
                if obj.get("t") == "fail":
                    self.done = True
                    self.close()
                    code = peer_code(obj.get("code"))
                    self.transfer.fail(TransferError("%s %s the transfer: %s" % (
                        self.transfer.peer, "cancelled" if code == "cancelled" else "stopped",
                        peer_text(obj.get("message"))), code=code))
                    return
        except datastream.StreamError as e:
            self.done = True
            self.close(abort=True)
            self.transfer.fail(TransferError("the receiver's data stream is corrupt (%s)" % e, code=e.code))

    def stream_lost(self, reason):
        self._close_file()
        self.plain = self.record = None
        if self.scheduled is not None and self.scheduled.active():
            self.scheduled.cancel()
        self.scheduled = None
        super().stream_lost(reason)


class ReceiveSession(Session):
    """Receives, verifies and lands the files of an incoming transfer: the reactor thread checks the stream
    (:class:`.ReceiveRules`); a :class:`.DiskWriter` writes and verifies the bytes."""

    def __init__(self, transfer, secret, clock, threads, buffers):
        super().__init__(transfer, secret, clock)
        self.threads = threads
        self.buffers = buffers
        self.rules = ReceiveRules(transfer.peer, transfer.items)
        self.writer = None
        self.unjournaled = 0
        self.paused = False

    def stream_started(self, stream):
        self.opener = datastream.Opener(self.keys.to_receiver, self.buffers)
        self.sealer = datastream.Sealer(self.keys.to_sender)
        self.writer = DiskWriter(self.threads, self, self.buffers)
        super().stream_started(stream)

    # flow control, called by the writer
    def pause(self):
        if not self.done and not self.stream.closed:
            self.paused = True
            self.stream.pauseReceiving()

    def resume(self):
        if self.paused and not self.done and not self.stream.closed:
            self.paused = False
            self.stream.resumeReceiving()
            self.arm()

    def handle(self, records):
        t = self.transfer
        try:
            for kind, obj in records:
                if self.done:
                    if kind == datastream.DATA:
                        self.buffers.give(obj)
                    return
                if kind == datastream.DATA:
                    self._data(obj)
                elif kind == datastream.JSON:
                    self._json(obj)
                elif kind == datastream.END:
                    if self.rules.end(obj):
                        self.writer.submit("end", obj)
                elif kind == datastream.FINISH:
                    self.writer.submit("finish")
        except LocalProblem as e:
            self.failed(e, False)
        except TransferError as e:
            self.failed(e, True)
        except datastream.StreamError as e:
            self.failed(TransferError("%s sent a corrupt data stream (%s)" % (t.peer, e), code=e.code), False)
        except OSError as e:
            self.failed(write_error(e), False)

    def _json(self, obj):
        t = self.transfer
        if obj.get("t") == "fail":
            raise TransferError("%s stopped the transfer: %s" % (t.peer, peer_text(obj.get("message"))),
                                code=peer_code(obj.get("code")))
        if obj.get("t") != "file":
            raise datastream.StreamError("unexpected JSON record")
        index, digests = self.rules.file(obj)
        if t.record["saved"][index] is None:
            fd, have = t.open_part(index)
            self.rules.opened(have)
            self.writer.submit("open", index, fd, filehash.ChunkHasher(t.items[index]["size"], have), digests)

    def _data(self, chunk):
        n = len(chunk)
        try:
            self.rules.data(n)
        except TransferError:
            self.buffers.give(chunk)
            raise
        self.writer.submit("data", chunk, size=n)  # the writer owns the buffer from here on
        self.transfer.progress(n)

    # results from the writer (reactor thread)

    def verified(self, index, length):
        t = self.transfer
        if self.done:
            return
        self.unjournaled += length - t.have[index]
        t.have[index] = length
        if self.unjournaled >= JOURNAL_EVERY:
            self.unjournaled = 0
            t.save()

    def ended(self, index):
        t = self.transfer
        if self.done:
            return
        if t.have[index] != t.items[index]["size"]:
            return self.failed(TransferError("%s is incomplete" % t.items[index]["path"], code="size_mismatch"),
                               False)
        try:
            t.land(index)
        except (TransferError, OSError) as e:
            self.failed(e if isinstance(e, TransferError) else
                        TransferError("cannot land %s: %s" % (t.items[index]["path"], e.strerror),
                                      code="write_failed"), False)

    def finished(self):
        t = self.transfer
        if self.done:
            return
        try:
            self.rules.finish(t.record["saved"])
        except TransferError as e:
            return self.failed(e, False)
        self.done = True
        self.writer.stop()
        self.stream.write(self.sealer.json({"t": "complete", "saved": t.record["saved"]}))
        self.close()
        t.complete(t.record["saved"])

    def failed(self, error, remove):
        """Stop: tell the sender why, and remove the partial file of a sender that lied (size, hash)."""
        if self.done:
            return
        self.done = True
        self.writer.cancel()
        self.tell_peer(error)
        self.close()
        index = self.rules.index
        if remove and index is not None and self.transfer.record["saved"][index] is None:
            try:
                self.transfer.discard_part(index)
            except (TransferError, OSError) as e:
                log.warn("could not remove a partial file: {error}", error=e)
        self.transfer.fail(error, resumable=not remove)

    def stopped(self):
        pass

    def stream_lost(self, reason):
        if self.writer is not None and not self.writer.stopping:
            self.writer.cancel()  # closes the partial file and ends the thread, however the session ended
        if not self.done:
            self.done = True
            self.transfer.interrupted("the data connection closed")
        super().stream_lost(reason)
