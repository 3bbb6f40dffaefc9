"""The registry's HTTP plumbing: body cap (413 without reading the rest) and the per-request deadline."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from p2pd.registry.http import REQUEST_DEADLINE, make_site


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request):
        return b"got %d" % len(request.content.read())

    def render_GET(self, request):
        return b"ok"


def connect(max_body=1000):
    clock = Clock()
    site = make_site(Echo(), max_body=max_body, reactor=clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return clock, channel, transport


def test_small_body_is_served():
    """A body under the cap reaches the resource."""
    _, channel, transport = connect()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert b"200 OK" in transport.value() and transport.value().endswith(b"got 5")


def test_declared_oversized_body_is_413_at_once():
    """A Content-Length over the cap is answered 413 before any body byte and the connection closes."""
    _, channel, transport = connect()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    channel.dataReceived(b"x" * 100000)  # whatever still arrives is dropped, not buffered
    assert channel.requests[0].content.tell() == 0 if channel.requests else True


def test_chunked_body_over_the_cap_is_413():
    """A chunked body without Content-Length is cut off with 413 as soon as it passes the cap."""
    _, channel, transport = connect()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        channel.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting


def test_slow_headers_are_cut_off():
    """A client trickling header bytes gets 408 and is disconnected at the deadline."""
    clock, channel, transport = connect()
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 100:
        channel.dataReceived(bytes([byte]))
        clock.advance(0.5)
        if transport.disconnecting:
            break
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting
    assert clock.seconds() <= REQUEST_DEADLINE + 0.5


def test_deadline_is_per_request_on_keepalive():
    """A long-lived keep-alive connection with prompt requests is never cut off."""
    clock, channel, transport = connect()
    for _ in range(5):
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(REQUEST_DEADLINE - 1)
    assert transport.value().count(b"200 OK") == 5
    assert not transport.disconnecting
