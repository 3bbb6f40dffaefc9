"""The peer's UDP socket, batched where Linux allows it: segmentation offload both ways, large buffers.

Twisted's ``udp.Port`` reads one datagram per ``recvfrom`` and sends one per ``sendto``; a stream at a few
hundred Mbit/s is then mostly system calls. On Linux:

- **GSO** (``UDP_SEGMENT``, level ``SOL_UDP`` 17, option 103): one ``sendmsg`` carries up to 64 datagrams of one
  size to one address (the last may be shorter), cut by the kernel. :meth:`BatchPort.send_batch` groups what a
  connection sends that way.
- **GRO** (``UDP_GRO``, option 104): the kernel hands several datagrams of one flow to one ``recvmsg_into``,
  with their size in a control message; :meth:`BatchPort.doRead` cuts them apart again.
- **Buffers**: several MB each way (``SO_RCVBUFFORCE`` where we may, else as much as ``rmem_max`` grants); what
  was granted is logged. A burst that overflows a small buffer is loss the sender must recover.

Each falls back cleanly where the kernel or the platform refuses it (an ``EIO`` from a GSO send, for one, when
the route cannot offload): then datagrams go one by one, as Twisted sends them.
"""

import errno
import socket
import struct

from twisted.application import internet
from twisted.internet import udp
from twisted.logger import Logger

log = Logger()

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_SEGMENTS = 64
MAX_GSO_BYTES = 65000
BUFFER = 8 << 20
_GRO_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_FALLBACK = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)
_FULL = (errno.EAGAIN, errno.ENOBUFS, errno.EWOULDBLOCK)


class BatchPort(udp.Port):
    gso = True
    gro = False
    maxThroughput = 64 * 1024  # read this much per turn, then let the ACKs it owes go out

    def startListening(self):
        super().startListening()
        self._tune()

    def _tune(self):
        sock = self.socket
        granted = {}
        for name, force, plain in (("receive", getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                                   ("send", getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
            for option in (force, plain):
                if option is None:
                    continue
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)
                    break
                except OSError:
                    continue
            granted[name] = sock.getsockopt(socket.SOL_SOCKET, plain)
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = _GRO_SPACE > 0
        except OSError:
            self.gro = False
        self.gso = hasattr(sock, "sendmsg") and hasattr(socket, "CMSG_SPACE")
        self._buffer = bytearray(65536)
        self._view = memoryview(self._buffer)
        log.info("UDP socket buffers: receive {receive} B, send {send} B granted; GSO {gso}, GRO {gro}",
                 receive=granted["receive"], send=granted["send"], gso="on" if self.gso else "off",
                 gro="on" if self.gro else "off")

    def doRead(self):
        if not self.gro:
            return super().doRead()
        read = 0
        sock, view, deliver = self.socket, self._view, self.protocol.datagramReceived
        while read < self.maxThroughput:
            try:
                n, ancillary, _flags, addr = sock.recvmsg_into([view], _GRO_SPACE)
            except OSError as e:
                if e.args[0] in udp._sockErrReadIgnore or e.args[0] in udp._sockErrReadRefuse:
                    return
                raise
            read += n
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]
            size = n
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                    size = struct.unpack("=i", data[:4])[0] or n
            try:
                if not n:  # an empty datagram (anyone may send one) goes up as Twisted's doRead passes it
                    deliver(b"", addr)
                for start in range(0, n, size or 1):
                    deliver(bytes(view[start:min(start + size, n)]), addr)
            except BaseException:
                log.failure("handling a datagram from {addr} failed", addr=addr)

    def send_batch(self, datagrams):
        """Send ``(datagram, addr)`` s, as few system calls as GSO allows; the ones the socket cannot take now
        (its buffer is full) are returned. Other errors (no route) drop the datagram: recovery sends again."""
        i, n = 0, len(datagrams)
        sock = self.socket
        while i < n:
            data, addr = datagrams[i]
            j = i + 1
            if self.gso:
                size, total = len(data), len(data)
                while (j < n and j - i < MAX_SEGMENTS and datagrams[j][1] == addr and total + size <= MAX_GSO_BYTES
                       and len(datagrams[j][0]) <= size and len(datagrams[j - 1][0]) == size):
                    total += len(datagrams[j][0])
                    j += 1
            try:
                if j - i > 1:
                    sock.sendmsg([b"".join(d for d, _ in datagrams[i:j])],
                                 [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(data)))], 0, addr)
                else:
                    sock.sendto(data, addr)
            except OSError as e:
                if e.errno in _FULL:
                    return datagrams[i:]
                if j - i > 1 and e.errno in _FALLBACK:
                    log.info("UDP segmentation offload refused ({error}): sending datagrams one by one", error=e)
                    self.gso = False
                    continue
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM,
                                   errno.EACCES, errno.EADDRNOTAVAIL, errno.EMSGSIZE):
                    raise
            i = j
        return []


class BatchUDPServer(internet.UDPServer):
    """``UDPServer`` on a :class:`BatchPort`."""

    def _getPort(self):
        port, protocol = self.args[0], self.args[1]
        listening = BatchPort(port, protocol, interface=self.kwargs.get("interface", ""), reactor=self.reactor)
        listening.startListening()
        return listening
