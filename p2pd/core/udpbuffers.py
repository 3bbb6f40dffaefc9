"""The two byte buffers of a UDP stream connection: what we send (kept until acknowledged, re-sent where lost)
and what we receive (put back in order, duplicates dropped, bounded by the credit we gave)."""

import bisect
import heapq


class RangeSet:
    """Disjoint half-open ranges ``[start, end)`` of offsets, merged as they are added."""

    def __init__(self):
        self.starts = []
        self.ends = []

    def __len__(self):
        return len(self.starts)

    def __iter__(self):
        return iter(zip(self.starts, self.ends))

    def add(self, start, end):
        if start >= end:
            return
        i = bisect.bisect_left(self.ends, start)  # the first range that ends at or after start
        j = bisect.bisect_right(self.starts, end)  # ranges before j start at or before end
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def missing(self, start, end):
        """The parts of ``[start, end)`` not in the set, in order."""
        out = []
        i = bisect.bisect_right(self.ends, start)
        while start < end:
            if i >= len(self.starts) or self.starts[i] >= end:
                out.append((start, end))
                break
            if self.starts[i] > start:
                out.append((start, self.starts[i]))
            start = max(start, self.ends[i])
            i += 1
        return out

    def pop_first(self):
        start, end = self.starts.pop(0), self.ends.pop(0)
        return start, end

    def discard_below(self, offset):
        """Forget everything below *offset*."""
        while self.starts and self.ends[0] <= offset:
            self.starts.pop(0)
            self.ends.pop(0)
        if self.starts and self.starts[0] < offset:
            self.starts[0] = offset


class SendBuffer:
    """The bytes written to the stream, from the lowest one not acknowledged to the last one written."""

    def __init__(self):
        self.offsets = []  # offset of each chunk held, ascending
        self.chunks = []
        self.head = 0  # chunks before this index are released
        self.acked = RangeSet()
        self.acked_to = 0  # every byte below this was acknowledged
        self.lost = RangeSet()  # ranges to send again
        self.end = 0  # bytes written
        self.next = 0  # the first byte never sent
        self.final = None  # the stream's size once finish() was called
        self.resent = 0  # bytes sent more than once

    @property
    def unacked(self):
        return self.end - self.acked_to

    def write(self, data):
        if self.final is not None:
            raise ValueError("write after the end of the stream")
        data = bytes(data)
        if data:
            self.offsets.append(self.end)
            self.chunks.append(data)
            self.end += len(data)

    def finish(self):
        if self.final is None:
            self.final = self.end

    def has_data(self, limit):
        """Whether there is something to send below the flow-control *limit*."""
        return bool(self.lost) or self.next < min(self.end, limit)

    def take(self, size, limit):
        """``(offset, bytes)`` of up to *size* bytes to send now (what was lost first, then new bytes below
        *limit*), or None."""
        while self.lost:
            start, end = self.lost.pop_first()
            pieces = self.acked.missing(start, end)
            if not pieces:
                continue
            s, e = pieces[0]
            e = min(e, s + size)
            for rest in self.acked.missing(e, end):
                self.lost.add(*rest)
            self.resent += e - s
            return s, self._slice(s, e)
        end = min(self.end, limit, self.next + size)
        if self.next >= end:
            return None
        start, self.next = self.next, end
        return start, self._slice(start, end)

    def _slice(self, start, end):
        i = bisect.bisect_right(self.offsets, start, self.head) - 1
        base = self.offsets[i]
        chunk = self.chunks[i]
        if end - base <= len(chunk):
            return chunk[start - base:end - base]
        parts = [chunk[start - base:]]
        while base + len(chunk) < end:
            i += 1
            base, chunk = self.offsets[i], self.chunks[i]
            parts.append(chunk[:end - base])
        return b"".join(parts)

    def on_acked(self, start, end):
        start = max(start, self.acked_to)
        if start >= end:
            return
        self.acked.add(start, end)
        if self.acked.starts[0] <= self.acked_to:
            self.acked_to = self.acked.ends[0]
            self._release()

    def on_lost(self, start, end):
        for s, e in self.acked.missing(max(start, self.acked_to), end):
            self.lost.add(s, e)

    def _release(self):
        """Drop the chunks that were acknowledged whole."""
        n = len(self.chunks)
        while self.head < n and self.offsets[self.head] + len(self.chunks[self.head]) <= self.acked_to:
            self.chunks[self.head] = None
            self.head += 1
        if self.head > 64 and self.head * 2 > n:
            del self.offsets[:self.head]
            del self.chunks[:self.head]
            self.head = 0
        self.acked.discard_below(self.acked_to)
        self.lost.discard_below(self.acked_to)

    @property
    def all_acked(self):
        return self.final is not None and self.acked_to >= self.final


class RecvBuffer:
    """The bytes received, handed out in order: ``add(offset, data)`` what a frame brought, ``read()`` what is
    in order now. Nothing is taken beyond ``limit``, the credit given to the sender."""

    def __init__(self, window):
        self.window = window
        self.limit = window  # the sender may send below this offset
        self.contig = 0  # every byte below this arrived
        self.ready = []  # in-order bytes not read yet
        self.ready_bytes = 0
        self.pending = {}  # offset -> bytes that arrived ahead of a gap
        self.heap = []
        self.pending_bytes = 0
        self.read_to = 0  # bytes handed out
        self.duplicate = 0  # bytes that arrived more than once
        self.final = None

    def add(self, offset, data):
        """False if the frame breaks the rules (beyond the credit, past the final size): the caller drops it."""
        end = offset + len(data)
        if end > self.limit or (self.final is not None and end > self.final):
            return False
        if end <= self.contig:
            self.duplicate += len(data)
            return True
        if offset < self.contig:
            self.duplicate += self.contig - offset
            data = data[self.contig - offset:]
            offset = self.contig
        if offset > self.contig:
            held = self.pending.get(offset)
            if held is None or len(held) < len(data):
                if held is None:
                    heapq.heappush(self.heap, offset)
                else:
                    self.pending_bytes -= len(held)
                self.pending[offset] = data
                self.pending_bytes += len(data)
            return True
        self._append(data)
        while self.heap and self.heap[0] <= self.contig:
            at = heapq.heappop(self.heap)
            held = self.pending.pop(at)
            self.pending_bytes -= len(held)
            if at + len(held) > self.contig:
                self.duplicate += self.contig - at
                self._append(held[self.contig - at:])
            else:
                self.duplicate += len(held)
        return True

    def _append(self, data):
        self.ready.append(data)
        self.ready_bytes += len(data)
        self.contig += len(data)

    def set_final(self, size):
        """The sender's stream ends at *size*: False if that contradicts what arrived."""
        if size < self.contig or (self.final is not None and self.final != size) or size > self.limit:
            return False
        if self.heap and max(at + len(self.pending[at]) for at in self.heap) > size:
            return False
        self.final = size
        return True

    @property
    def finished(self):
        return self.final is not None and self.read_to >= self.final

    def read(self):
        """The in-order bytes not read yet (b"" if none)."""
        if not self.ready:
            return b""
        data = self.ready[0] if len(self.ready) == 1 else b"".join(self.ready)
        self.ready = []
        self.read_to += self.ready_bytes
        self.ready_bytes = 0
        return data

    def credit_due(self):
        """The new limit to advertise, or None while the old one still leaves most of the window."""
        new = self.read_to + self.window
        return new if new - self.limit >= self.window // 4 else None

    def advertise(self, new):
        self.limit = max(self.limit, new)
