"""A client of the registry's HTTP API v1 that signs what must be signed.

It takes the HTTP client (``treq`` or ``treq.testing.StubTreq``) and the clock by injection, so the same code
talks to a live registry and, in unit tests, straight to the Klein resource. Error replies become
:mod:`p2pd.errors` exceptions carrying the registry's own message.
"""

from urllib.parse import quote, urlencode

from twisted.internet import defer

from p2pd import errors
from p2pd.core import jsonbody, signing

STATUS_ERRORS = {
    400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
    405: errors.MethodNotAllowed, 409: errors.Conflict, 413: errors.TooLarge, 415: errors.UnsupportedMediaType,
    503: errors.StoreUnavailable,
}


class RegistryError(errors.P2PDError):
    """An error reply from the registry that has no more specific class."""


def error_for(status: int, body: dict) -> errors.P2PDError:
    code = body.get("error", "error") if isinstance(body, dict) else "error"
    message = body.get("message", "registry answered %d" % status) if isinstance(body, dict) else str(body)
    if status in (429, 507):  # rate-limited, or the registry nearly full: both say when to come back
        retry_after = body.get("retry_after", 1) if isinstance(body, dict) else 1
        kind = errors.TooManyRequests if status == 429 else errors.RegistryFull
        err = kind(message, retry_after=int(retry_after) if isinstance(retry_after, (int, float)) else 1)
    else:
        err = STATUS_ERRORS.get(status, RegistryError)(message)
        err.status = status
    err.code = code
    return err


class RegistryClient:
    def __init__(self, base_url: str, clock, http, identity: signing.Identity = None, name: str = None,
                 timeout: float = 10):
        self.base = base_url.rstrip("/")
        self.clock = clock
        self.http = http
        self.identity = identity
        self.name = name
        self.timeout = timeout

    @defer.inlineCallbacks
    def request(self, method, path, body=None, signed=False, query=None):
        """Send one request; the decoded JSON reply, or the matching P2PDError."""
        if query:
            path += "?" + urlencode(query)
        data = b"" if body is None else jsonbody.dumps(body)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if signed:
            headers.update(signing.sign_request(self.identity, self.name, method, path, data, self.clock.seconds()))
        response = yield self.http.request(method, self.base + path, data=data or None,
                                           headers={k: [v] for k, v in headers.items()}, timeout=self.timeout)
        content = yield response.content()
        try:
            reply = jsonbody.loads(content)
        except errors.BadRequest:
            raise RegistryError("registry answered %d with a body that is not JSON" % response.code)
        if response.code >= 400:
            raise error_for(response.code, reply)
        return reply

    def _peer(self, name=None, suffix=""):
        return "/v1/peers/" + quote(name or self.name, safe="") + suffix

    # health

    def health(self):
        return self.request("GET", "/v1/health")

    # peers

    def register(self, tcp=(), udp=(), fingerprint=None, version=None, box=None):
        body = {"key": self.identity.public_text, "tcp": list(tcp), "udp": list(udp)}
        if fingerprint:
            body["fingerprint"] = fingerprint
        if box:
            body["box"] = box
        if version:
            body["version"] = version
        return self.request("PUT", self._peer(), body, signed=True)

    def heartbeat(self):
        return self.request("POST", self._peer(suffix="/heartbeat"), signed=True)

    def go_offline(self):
        return self.request("DELETE", self._peer(suffix="/lease"), signed=True)

    def release(self):
        return self.request("DELETE", self._peer(), signed=True)

    def lookup(self, name):
        return self.request("GET", self._peer(name))

    def peers(self, after=None, limit=50):
        query = {"limit": limit}
        if after:
            query["after"] = after
        return self.request("GET", "/v1/peers", query=query)

    # rooms

    def rooms(self, after=None, limit=50):
        query = {"limit": limit}
        if after:
            query["after"] = after
        return self.request("GET", "/v1/rooms", query=query)

    def room(self, room):
        return self.request("GET", "/v1/rooms/" + quote(room, safe=""))

    def room_online(self, room):
        """The room's view with ``members`` only those online now (``member_count`` counts them all): whom a post
        to the room can reach."""
        return self.request("GET", "/v1/rooms/" + quote(room, safe=""), query={"online": "true"})

    def delete_room(self, room):
        """Delete a room we own, with all its memberships: ``{"id": ..., "deleted": true}``."""
        return self.request("DELETE", "/v1/rooms/" + quote(room, safe=""), signed=True)

    def create_room(self, room, join=True):
        return self.request("POST", "/v1/rooms", {"name": room} if join else {"name": room, "join": False},
                            signed=True)

    def _member(self, room):
        return "/v1/rooms/%s/members/%s" % (quote(room, safe=""), quote(self.name, safe=""))

    def join(self, room):
        return self.request("PUT", self._member(room), signed=True)

    def leave(self, room):
        return self.request("DELETE", self._member(room), signed=True)

    # mailbox

    def deposit(self, recipient, payload: str):
        return self.request("POST", "/v1/mailbox/" + quote(recipient, safe=""), {"payload": payload}, signed=True)

    def fetch(self, limit=50):
        return self.request("GET", "/v1/mailbox/" + quote(self.name, safe=""), signed=True, query={"limit": limit})

    def ack(self, msg_id):
        return self.request("DELETE", "/v1/mailbox/%s/%s" % (quote(self.name, safe=""), quote(msg_id, safe="")),
                            signed=True)

    def ack_many(self, ids):
        """Acknowledge up to 200 messages in one request: ``{"deleted": N}``."""
        return self.request("DELETE", "/v1/mailbox/" + quote(self.name, safe=""), signed=True,
                            query={"ids": ",".join(ids)})
