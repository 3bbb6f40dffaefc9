"""The registry's HTTP API v1 (JSON over Klein). The OpenAPI document is ``openapi.json`` beside this module.

The app is a class with its store, clock and limits injected; domain errors (:mod:`p2pd.errors`) map to HTTP
codes in one place, :meth:`RegistryAPI.p2pd_error`. Every write for a name is signed by the key that owns it
(:mod:`p2pd.core.signing`); nonces are remembered in the store so that a captured request cannot be replayed.
The peer routes are here, the room and mailbox routes in :mod:`p2pd.registry.rooms_api` and
:mod:`p2pd.registry.mailbox_api`: one Klein app (:mod:`p2pd.registry.views`).

A new name costs: one of its key's ``names-per-key``, one of its address's ``claims-per-address-per-hour``
(:mod:`p2pd.registry.claims`), and room in a store that is not nearly full (:mod:`p2pd.registry.memory`). It is
on probation until its owner renews it (:mod:`p2pd.registry.store`). Updating one's own name costs none of that.
"""

import ipaddress
import itertools
import pathlib
import re

from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from p2pd.core import signing
from p2pd.core.names import canonical_name
from p2pd.core.ratelimit import RateLimiter
from p2pd.errors import BadRequest, Forbidden, NoSuchPeer, P2PDError, RetryLater, StoreUnavailable
from p2pd.registry import schema
from p2pd.registry.claims import ClaimQuota
from p2pd.registry.limits import RegistryLimits
from p2pd.registry.mailbox_api import MailboxRoutes
from p2pd.registry.memory import MemoryWatch
from p2pd.registry.requests import RequestChecks, client_host, signer_name
from p2pd.registry.rooms_api import RoomRoutes
from p2pd.registry.views import app, page_args, peer_view

log = Logger()

OPENAPI = pathlib.Path(__file__).with_name("openapi.json")
MAX_ADDRESSES = 8
FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def parse_address(text) -> str:
    """Validate ``host:port`` / ``[v6]:port``; return it normalised."""
    if not isinstance(text, str) or len(text) > 270:
        raise BadRequest("an address must be a 'host:port' string")
    host, sep, port = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise BadRequest("invalid address %r: expected host:port with a port in 1-65535" % (text,))
    if host.startswith("[") and host.endswith("]"):
        try:
            return "[%s]:%d" % (ipaddress.IPv6Address(host[1:-1]).compressed, int(port))
        except ValueError:
            raise BadRequest("invalid IPv6 address in %r" % (text,)) from None
    try:
        return "%s:%d" % (ipaddress.IPv4Address(host), int(port))
    except ValueError:
        if HOSTNAME_RE.fullmatch(host):
            return "%s:%d" % (host.lower(), int(port))
    raise BadRequest("invalid host in address %r" % (text,))


def address_list(body, field):
    value = body.get(field, [])
    if not isinstance(value, list) or len(value) > MAX_ADDRESSES:
        raise BadRequest("%s must be a list of at most %d 'host:port' strings" % (field, MAX_ADDRESSES))
    return [parse_address(a) for a in value]


class RegistryAPI(RoomRoutes, MailboxRoutes, RequestChecks):
    """HTTP API v1 of the registry over an injected store and clock (request checks: :class:`RequestChecks`).

    *memory* is the :class:`MemoryWatch` the service polls; by default one that is never polled, which refuses
    nothing."""

    app = app

    def __init__(self, store, clock, lease_ttl=schema.LEASE_TTL, read_rate=100, write_rate=20,
                 limits=RegistryLimits(), memory=None):
        self.store = store
        self.clock = clock
        self.stun_port = None  # set by the service once the STUN responder listens
        self.lease_ttl = lease_ttl
        self.limits = limits
        self.reads = RateLimiter(read_rate, read_rate * 2)
        self.writes = RateLimiter(write_rate, write_rate * 2)
        self.claims = ClaimQuota(limits.claims_per_address_per_hour)
        self.memory = memory or MemoryWatch(store, limits.mailbox_memory_share, limits.claims_memory_share)
        self.deposits = itertools.count()

    def resource(self):
        return self.app.resource()

    # errors

    @app.handle_errors(P2PDError)
    def p2pd_error(self, request, failure):
        error = failure.value
        if isinstance(error, RetryLater):
            request.setHeader(b"Retry-After", str(error.retry_after).encode())
        if isinstance(error, StoreUnavailable):
            request.setHeader(b"Retry-After", b"1")
            log.warn("store unavailable: {error}", error=error.message)
        return self.reply(request, error.to_json(), error.status)

    @app.handle_errors(WerkzeugNotFound)
    def route_not_found(self, request, failure):
        return self.reply(request, {"error": "not_found", "message": "no such endpoint; see /v1/openapi.json"}, 404)

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request, failure):
        allowed = sorted(failure.value.valid_methods or ())
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        return self.reply(request, {"error": "method_not_allowed", "message": "method not allowed here"}, 405)

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        log.failure("unexpected error answering {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return self.reply(request, {"error": "internal", "message": "internal error"}, 500)

    # health and documentation

    @app.route("/v1/health", methods=["GET"])
    @defer.inlineCallbacks
    def health(self, request):
        try:
            yield self.store.ping()
        except StoreUnavailable as e:
            request.setHeader(b"Retry-After", b"1")
            return self.reply(request, {"status": "unavailable", "error": e.code, "message": e.message}, 503)
        return self.reply(request, {"status": "ok", "stun": self.stun_port})

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return OPENAPI.read_bytes()

    # peers

    @app.route("/v1/peers", methods=["GET"])
    @defer.inlineCallbacks
    def list_peers(self, request):
        self.limit(request, self.reads)
        after, limit = page_args(request)
        now = self.now_ms()
        page, cursor = yield self.store.list_online(now, after, limit)
        return self.reply(request, {"peers": [peer_view(e, now) for e in page], "next": cursor})

    @app.route("/v1/peers/<string:name>", methods=["GET"])
    @defer.inlineCallbacks
    def get_peer(self, request, name):
        self.limit(request, self.reads)
        name = canonical_name(name)
        entry = yield self.store.get_peer(name)
        if entry is None:
            raise NoSuchPeer("unknown peer %s" % name)
        return self.reply(request, peer_view(entry, self.now_ms()))

    @app.route("/v1/peers/<string:name>", methods=["PUT"])
    @defer.inlineCallbacks
    def register(self, request, name):
        """Claim or update a name: signed by the key in the body, which must be the name's owner."""
        self.limit(request, self.writes)
        name = canonical_name(name)
        raw, body = self.read_body(request)
        key = signing.parse_public_key(body.get("key"))
        key_text = signing.public_key_text(key)  # one spelling per key: base64url has several for 32 bytes
        fingerprint = body.get("fingerprint")
        if fingerprint is not None and not (isinstance(fingerprint, str) and FINGERPRINT_RE.fullmatch(fingerprint)):
            raise BadRequest("fingerprint must be 'sha256:' followed by 64 lowercase hex digits")
        box = body.get("box")
        if box is not None:
            box = signing.public_key_text(signing.parse_public_key(box, "box"))
        unknown = set(body) - {"key", "fingerprint", "tcp", "udp", "version", "box"}
        if unknown:
            raise BadRequest("unknown fields: %s" % ", ".join(sorted(unknown)))
        version = body.get("version")
        if version is not None and not (isinstance(version, str) and len(version) <= 64):
            raise BadRequest("version must be a short string")
        sig = self.signed(request)
        if signer_name(sig) != name:
            raise Forbidden("the request is signed as %s, not %s" % (sig.name, name))
        sig.check_fresh(self.clock.seconds())
        sig.verify(key, "PUT", request.uri.decode("latin-1"), raw)
        now = self.now_ms()
        record = {"fingerprint": fingerprint, "box": box, "tcp": address_list(body, "tcp"), "udp": address_list(body, "udp"),
                  "observed": client_host(request), "version": version, "updated_at": now}
        existing = yield self.store.get_peer(name)
        if existing is not None and existing.key == key_text:
            record["registered_at"] = existing.record.get("registered_at", now)
        else:
            record["registered_at"] = now
        yield self.use_nonce(name, sig)
        if existing is None:  # a new claim; updating one's own name, or trying another's, costs no quota
            self.memory.admit_claim()
            self.claims.admit(record["observed"], self.clock.seconds())
        created = yield self.store.register(name, key_text, record, now, self.lease_ttl,
                                            max_names=self.limits.names_per_key)
        entry = yield self.store.get_peer(name)
        if created:
            log.info("peer {name} registered from {addr}", name=name, addr=record["observed"])
        return self.reply(request, peer_view(entry, now), 201 if created else 200)

    @app.route("/v1/peers/<string:name>/heartbeat", methods=["POST"])
    @defer.inlineCallbacks
    def heartbeat(self, request, name):
        """Renew the lease; the first heartbeat of a new name also ends its probation."""
        self.limit(request, self.writes)
        name = canonical_name(name)
        yield self.authenticate(request, request.content.read(), as_name=name)
        expiry = yield self.store.heartbeat(name, self.now_ms(), self.lease_ttl)
        return self.reply(request, {"name": name, "online": True, "lease_expires": expiry, "ttl": self.lease_ttl})

    @app.route("/v1/peers/<string:name>/lease", methods=["DELETE"])
    @defer.inlineCallbacks
    def go_offline(self, request, name):
        self.limit(request, self.writes)
        name = canonical_name(name)
        yield self.authenticate(request, request.content.read(), as_name=name)
        yield self.store.set_offline(name)
        return self.reply(request, {"name": name, "online": False})

    @app.route("/v1/peers/<string:name>", methods=["DELETE"])
    @defer.inlineCallbacks
    def release(self, request, name):
        self.limit(request, self.writes)
        name = canonical_name(name)
        yield self.authenticate(request, request.content.read(), as_name=name)
        yield self.store.release(name, self.now_ms())
        log.info("peer {name} released its name", name=name)
        return self.reply(request, {"name": name, "released": True})

