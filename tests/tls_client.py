"""A TLS client on a peer daemon's port, as an attacker (or a test playing the other peer) would write one:
pyOpenSSL over a non-blocking socket, every call bounded by a deadline. ``test_peer_e2e`` sends raw bytes with it;
``test_files_e2e.Link`` speaks the line protocol on top."""

import json
import select
import socket
import time

from OpenSSL import SSL

from p2pd.core import wire
from p2pd.peer import identity as identity_mod


def peer_port(peer):
    """The TCP port a running PeerProcess registered."""
    return int(peer.info["addresses"]["tcp"][0].rsplit(":", 1)[1])


class TLSClient:
    """A blocking-with-deadlines pyOpenSSL client that shows *ident*'s certificate to a peer's TCP port."""

    def __init__(self, port, ident, timeout=10, source=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setblocking(False)
        self.conn = SSL.Connection(identity_mod.client_tls_options(ident).getContext(), self.sock)
        self.conn.set_connect_state()
        self.buf = b""
        self.closed = False
        self._io(self.conn.do_handshake, timeout=timeout)

    def _io(self, call, *args, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return call(*args)
            except SSL.WantReadError:
                select.select([self.sock], [], [], max(0.0, min(0.1, deadline - time.monotonic())))
            except SSL.WantWriteError:
                select.select([], [self.sock], [], max(0.0, min(0.1, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                raise TimeoutError("TLS I/O did not finish within %ss" % timeout)

    def send(self, data, timeout=10):
        """Send *data*; False if the peer closed the connection before all of it went out."""
        view = memoryview(data)
        try:
            while view:
                n = self._io(self.conn.send, view[:16384].tobytes(), timeout=timeout)
                view = view[n:]
        except (SSL.Error, OSError):
            self.closed = True
            return False
        return True

    def send_frame(self, frame):
        return self.send(wire.encode(frame) + b"\n")

    def receive(self, wait=0.05):
        """One read: what arrived is added to ``buf`` (True), or nothing came within *wait* (False); a closed
        connection sets ``closed``."""
        try:
            chunk = self.conn.recv(1 << 16)
        except SSL.WantReadError:
            select.select([self.sock], [], [], wait)
            return False
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error, OSError):
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def read(self, timeout=5):
        """Read for up to *timeout* seconds or until the connection closes; the complete lines seen so far."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.receive()
        return [json.loads(line) for line in self.buf.split(b"\n")[:-1] if line.strip()]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
