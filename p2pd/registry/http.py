"""HTTP plumbing for the registry: a request body cap, a whole-request deadline and a Site with sane timeouts.

Twisted's web server has no request-body limit of its own, so :class:`LimitedRequest` counts body bytes as
they arrive (declared by Content-Length or chunked) and answers 413 and closes the connection as soon as the
cap is passed, never buffering more than the cap.
"""

from urllib.parse import unquote_to_bytes

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
        self.transport.write(raw_error(408, b"Request Timeout", "request_timeout",
                                       "request not complete within %d s" % self.request_deadline))
        self.transport.loseConnection()


def raw_error(status: int, reason: bytes, code: str, message: str) -> bytes:
    """A complete JSON error response that closes the connection, for answers given outside Klein."""
    body = jsonbody.dumps({"error": code, "message": message})
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, reason, len(body))) + body


def path_problem(path: bytes):
    """Why a request path is refused before routing, or None: an encoded slash would be decoded into a path
    separator (and route ``abc%2Fheartbeat`` elsewhere), and a path must decode as UTF-8."""
    raw = path.split(b"?", 1)[0]
    if b"%2f" in raw.lower() or b"%5c" in raw.lower():
        return "encoded '/' or '\\' in the path"
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return "the path is not valid UTF-8 once percent-decoded"
    return None


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
        problem = path_problem(path)
        if problem:
            self.rejected = True
            self.channel.transport.write(raw_error(400, b"Bad Request", "bad_path", problem))
            self.channel.transport.loseConnection()
            return
        super().requestReceived(command, path, version)

    def _too_large(self):
        """Answer 413 straight on the transport and stop reading: the rest of the body is never taken in."""
        if self.rejected:
            return
        self.rejected = True
        transport = self.channel.transport
        transport.write(raw_error(413, b"Payload Too Large", "too_large",
                                  "request body larger than %d bytes" % self.max_body))
        transport.loseConnection()


def make_site(resource, max_body=MAX_BODY, timeout=IDLE_TIMEOUT, reactor=None) -> server.Site:
    site = server.Site(resource, timeout=timeout, reactor=reactor)
    site.protocol = DeadlineChannel
    site.requestFactory = type("Request", (LimitedRequest,), {"max_body": max_body})
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda request: None  # no access log: a line per request costs a third of the throughput
    return site
