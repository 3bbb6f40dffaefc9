"""What every registry request goes through before its route's own work: the rate limit of its address, a JSON
body of the right type, and for writes the Ed25519 signature of the name's owner with a fresh nonce
(:mod:`p2pd.core.signing`). :class:`RequestChecks` is the base of the Klein app; it expects ``store``, ``clock``,
``reads`` and ``writes`` on the instance."""

from twisted.internet import defer

from p2pd.core import jsonbody, signing
from p2pd.core.clock import now_ms
from p2pd.core.names import canonical_name
from p2pd.errors import Forbidden, InvalidName, TooManyRequests, Unauthorized, UnsupportedMediaType
from p2pd.registry import schema


def signer_name(sig) -> str:
    try:
        return canonical_name(sig.name)
    except InvalidName:
        raise Unauthorized("%s is not a valid peer name" % signing.H_NAME) from None


def client_host(request) -> str:
    """The client's IP address ("local" on a unix socket)."""
    return getattr(request.getClientAddress(), "host", None) or "local"



class RequestChecks:
    """Replies, rate limits, JSON bodies and signed requests for the registry's routes."""

    def now_ms(self) -> int:
        return now_ms(self.clock)

    def reply(self, request, body, code=200):
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return jsonbody.dumps(body)

    def limit(self, request, limiter):
        wait = limiter.check(client_host(request), self.clock.seconds())
        if wait:
            raise TooManyRequests("too many requests from your address; retry in %d s" % wait, retry_after=wait)

    def read_body(self, request) -> tuple:
        """(raw bytes, JSON object) of a request that must carry a JSON object."""
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise UnsupportedMediaType("send the body as Content-Type: application/json")
        raw = request.content.read() if request.content is not None else b""
        return raw, jsonbody.loads_object(raw)

    def signed(self, request) -> signing.SignedRequest:
        headers = {h: (request.getHeader(h) or "") for h in signing.SIGNED_HEADERS}
        headers = {h: v.decode("latin-1") if isinstance(v, bytes) else v for h, v in headers.items()}
        return signing.SignedRequest(headers)

    @defer.inlineCallbacks
    def authenticate(self, request, body: bytes, as_name=None):
        """Check the request's signature against the key that owns the signing name; return its entry.

        *as_name*: the canonical name the request acts for; the signer must be that name (403 otherwise).
        """
        sig = self.signed(request)
        signer = signer_name(sig)
        if as_name is not None and signer != as_name:
            raise Forbidden("%s may not act for %s" % (signer, as_name))
        sig.check_fresh(self.clock.seconds())
        entry = yield self.store.get_peer(signer)
        if entry is None:
            error = Unauthorized("unknown signer %s: register the name first" % signer)
            error.code = "unknown_signer"
            raise error
        sig.verify(signing.parse_public_key(entry.key), request.method.decode("ascii"),
                   request.uri.decode("latin-1"), body)
        yield self.use_nonce(signer, sig)
        return entry

    @defer.inlineCallbacks
    def use_nonce(self, name, sig):
        fresh = yield self.store.use_nonce(name, sig.nonce, self.now_ms(), schema.NONCE_TTL)
        if not fresh:
            raise Unauthorized("replayed request (nonce already used)")
