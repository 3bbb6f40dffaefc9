"""aioquic's side of udp_bench.py: one stream of bulk bytes over QUIC, its asyncio API, one process per side.

    .venv/bin/python benchmarks/quic_bulk.py receive --dir DIR       # prints {"port": P}, later its result
    .venv/bin/python benchmarks/quic_bulk.py send --port P --size 4M --dir DIR [--cc reno]

The receiver makes a self-signed certificate (``cryptography``, ECDSA P-256, for ``localhost`` and 127.0.0.1)
and writes it to ``DIR/cert.pem`` before it listens; the sender verifies the server against it. The sender opens
one bidirectional stream and writes ``--size`` bytes on it, a MiB at a time, keeping at most ``--buffer`` bytes
that the receiver has not acknowledged in aioquic's send buffer, then ends the stream. The receiver counts the
stream's bytes; at the end of the stream, or on SIGTERM (whatever came so far), it prints one JSON line,
``{"bytes", "seconds"}`` (first stream byte to last, or to SIGTERM when the stream did not end), ``complete``,
and closes the connection. The sender prints its own line (seconds from its first write until the receiver
closed, packets aioquic declared lost, smoothed RTT, congestion window) and exits.

aioquic's defaults otherwise: 1200-byte datagrams (the raw blast's size), NewReno ("reno"; ``--cc cubic``),
flow-control windows of 1 MiB that it doubles as they fill.
"""

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import signal
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = ["p2pd-udp-bench"]
CHUNK = 1 << 20
ZEROS = bytes(CHUNK)


def make_certificate(directory):
    """A self-signed certificate for localhost/127.0.0.1 and its key, written to *directory*: their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path + ".part", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(cert_path + ".part", cert_path)
    return cert_path, key_path


# the receiver


class Count:
    """What the receiving process has seen (one connection, one stream)."""

    def __init__(self, loop):
        self.loop = loop
        self.bytes = 0
        self.first = self.last = None
        self.complete = False
        self.done = asyncio.Event()

    def result(self) -> dict:
        if self.first is None:
            seconds = 0.0
        else:
            seconds = (self.last if self.complete else self.loop.time()) - self.first
        return {"bytes": self.bytes, "seconds": round(seconds, 6), "complete": self.complete}


class Receiver(QuicConnectionProtocol):
    def __init__(self, *args, count, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = count

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            count = self.count
            now = count.loop.time()
            if count.first is None:
                count.first = now
            count.bytes += len(event.data)
            count.last = now
            if event.end_stream:
                count.complete = True
                count.done.set()
                self.close()


async def receive(args):
    loop = asyncio.get_running_loop()
    count = Count(loop)
    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    config.load_cert_chain(*make_certificate(args.dir))
    server = await serve("127.0.0.1", 0, configuration=config,
                         create_protocol=lambda *a, **kw: Receiver(*a, count=count, **kw))
    print(json.dumps({"port": server._transport.get_extra_info("sockname")[1]}), flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, count.done.set)
    await count.done.wait()
    print(json.dumps(count.result()), flush=True)
    await asyncio.sleep(0.1)  # the CONNECTION_CLOSE goes out
    server.close()


# the sender


class Sender(QuicConnectionProtocol):
    """Writes *size* bytes on one stream, topping aioquic's send buffer up as acknowledgements drain it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = 0
        self.stream_id = None
        self.buffer = 0
        self.lost = 0
        self.closed = asyncio.Event()

    def start(self, size, buffer):
        self.left, self.buffer = size, buffer
        self.stream_id = self._quic.get_next_available_stream_id()
        recovery = getattr(self._quic, "_loss", None)
        if recovery is not None and hasattr(recovery, "_on_packets_lost"):  # count losses (aioquic internals)
            declare = recovery._on_packets_lost

            def counted(*args, packets, **kwargs):
                self.lost += len(packets)
                return declare(*args, packets=packets, **kwargs)

            recovery._on_packets_lost = counted
        self.top_up()

    def unacknowledged(self) -> int:
        """Bytes of our stream in aioquic's send buffer (aioquic internals; 0 when they are not there)."""
        stream = getattr(self._quic, "_streams", {}).get(self.stream_id)
        sender = getattr(stream, "sender", None)
        return getattr(sender, "_buffer_stop", 0) - getattr(sender, "_buffer_start", 0)

    def top_up(self):
        while self.left and self.unacknowledged() < self.buffer:
            n = min(CHUNK, self.left)
            self.left -= n
            self._quic.send_stream_data(self.stream_id, ZEROS[:n], end_stream=not self.left)
        self.transmit()

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        if self.left and self.unacknowledged() < self.buffer // 2:
            self.top_up()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed.set()

    def figures(self) -> dict:
        recovery = getattr(self._quic, "_loss", None)
        return {"lost_packets": self.lost, "smoothed_rtt_ms": round(1000 * getattr(recovery, "_rtt_smoothed", 0), 2),
                "cwnd": getattr(recovery, "congestion_window", None)}


async def send(args):
    loop = asyncio.get_running_loop()
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name="localhost",
                               congestion_control_algorithm=args.cc)
    config.load_verify_locations(os.path.join(args.dir, "cert.pem"))
    async with connect("127.0.0.1", args.port, configuration=config, create_protocol=Sender,
                       wait_connected=True) as client:
        began = loop.time()
        client.start(args.size, args.buffer)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        waits = [asyncio.ensure_future(client.closed.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        print(json.dumps(dict(client.figures(), bytes=args.size - client.left, seconds=round(
            loop.time() - began, 6), closed_by_receiver=client.closed.is_set())), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("receive", "send"))
    parser.add_argument("--dir", required=True, help="where the receiver writes cert.pem (and key.pem)")
    parser.add_argument("--port", type=int, help="send: where the receiver (or a proxy) listens on 127.0.0.1")
    parser.add_argument("--size", type=int, default=4 << 20, help="send: bytes on the stream (4 MiB)")
    parser.add_argument("--buffer", type=int, default=4 << 20, help="send: unacknowledged bytes buffered at most")
    parser.add_argument("--cc", default="reno", help="send: aioquic's congestion control (reno, cubic)")
    args = parser.parse_args(argv)
    if args.role == "send" and not args.port:
        parser.error("send needs --port")
    asyncio.run(receive(args) if args.role == "receive" else send(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
