"""HTTP plumbing for the registry: a request body cap, a whole-request deadline and a Site with sane timeouts.

Twisted's web server has no request-body limit of its own, so :class:`LimitedRequest` counts body bytes as
they arrive (declared by Content-Length or chunked) and answers 413 and closes the connection as soon as the
cap is passed, never buffering more than the cap.
"""

from twisted.web import http, server

from p2pd.core import jsonbody

MAX_BODY = 256 * 1024
IDLE_TIMEOUT = 15
REQUEST_DEADLINE = 15


class DeadlineChannel(http.HTTPChannel):
    """An HTTP channel that gives each request a deadline from its first byte to its last.

    The idle timeout alone is reset by every byte, so a client trickling one header byte every few seconds
    (slowloris) or a body byte at a time would hold a connection forever. Here a request that is not complete
    within ``request_deadline`` seconds gets 408 and the connection is closed.
    """

    request_deadline = REQUEST_DEADLINE
    _deadline = None

    def dataReceived(self, data):
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(self.request_deadline, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self):
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        self._deadline = None
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


class LimitedRequest(server.Request):
    max_body = MAX_BODY

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body_bytes = 0
        self.rejected = False

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self._too_large()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.rejected:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body:
            self._too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.rejected:
            return
        super().requestReceived(command, path, version)

    def _too_large(self):
        """Answer 413 straight on the transport and stop reading: the rest of the body is never taken in."""
        if self.rejected:
            return
        self.rejected = True
        body = jsonbody.dumps({
            "error": "too_large",
            "message": "request body larger than %d bytes" % self.max_body,
        })
        head = (
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        transport = self.channel.transport
        transport.write(head + body)
        transport.loseConnection()


def make_site(resource, max_body=MAX_BODY, timeout=IDLE_TIMEOUT, reactor=None) -> server.Site:
    site = server.Site(resource, timeout=timeout, reactor=reactor)
    site.protocol = DeadlineChannel
    site.requestFactory = type("Request", (LimitedRequest,), {"max_body": max_body})
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda request: None  # no access log: a line per request costs a third of the throughput
    return site
