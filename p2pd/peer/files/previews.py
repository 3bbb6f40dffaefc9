"""Images in transfers (issue 14): what an offer says of its images, the previews it carries, and the check of
an image once it has landed.

The sender looks at every offered file's first bytes (:mod:`p2pd.core.images`: only PNG, JPEG, GIF and WEBP
count, told by content). An image gets ``"image": {"format": "JPEG", "width": 4032, "height": 3024}`` on its
item, or ``{"format": "PNG", "error": "too large to decode safely: ..."}`` when it cannot be read (a
decompression bomb, a broken header): the offer goes all the same, that item just has no preview. The offer
carries at most :data:`MAX_PREVIEWS` previews, of its first images, as ``"previews": [{"i": INDEX, "jpeg":
BASE64}]`` (a JPEG of at most 256 px and 16 KiB, about 22 KB of base64): two fit one 64 KiB line beside a list
of items, and what does not fit is left out (the facts of the items first, then the previews), so an offer
never fails because of its images.

The receiver trusts none of it: facts of the wrong shape are dropped (one log line per offer), and a preview
of an offer that waits for the user's answer is kept only once it is shown to be a JPEG of at most 256 px a side
that decodes (in a thread; the offer is shown to the watchers after that). After a file
lands, if its first bytes or its offer say it is an image, it is decoded once (in a thread, never past the
bounds of :mod:`p2pd.core.images`) and what was found goes into its item as ``"checked"`` (``ok``,
``invalid``, ``refused`` for a bomb, ``unchecked`` when too costly to decode) and to the watchers as an
``image`` event. A file that does not decode still lands: it is the sender's bytes, marked.

The decoding here runs in the manager's IThreads, one image at a time (so their memory does not add up)."""

import base64
import binascii

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import images, jsonbody, wire
from p2pd.core.clock import now_ms
from p2pd.errors import NotFound, P2PDError
from p2pd.peer.storage.previews import KEEP

log = Logger()

MAX_PREVIEWS = 2  # previews in one offer
MAX_B64 = 4 * -(-images.THUMB_BYTES // 3)  # base64 characters of the largest preview
MAX_ERROR = 300  # characters of a sender's reason kept
MAX_SIDE = 2 ** 31 - 1  # the largest width or height (PNG's)
LINE_MARGIN = 1024  # bytes of the offer's line left free when its images are added


# -- the sender's side: blocking, in a thread ---------------------------------------------------------------------

def describe_files(paths, previews=MAX_PREVIEWS):
    """``[(facts or None, preview or None)]`` for the files at *paths*, in order: the facts of each image by
    content, and a preview of the first *previews* images that make one (of the first ``2 * previews`` tried).
    Blocks: run it in a thread."""
    out, made, tries = [], 0, 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                claimed = images.sniff(f.read(images.SNIFF_BYTES))
            if claimed is None:
                out.append((None, None))
                continue
            facts = images.describe(path)
        except OSError:  # it went since it was hashed: the send itself will say so
            out.append((None, None))
            continue
        except images.ImageProblem as e:
            out.append(({"format": claimed, "error": str(e)[:MAX_ERROR]}, None))
            continue
        thumb = None
        if made < previews and tries < 2 * previews:  # a folder of broken images costs a few tries, not all
            tries += 1
            try:
                thumb = images.thumbnail(path)
                made += 1
            except images.TooCostly:
                pass  # a fine image, too large to decode here: no preview
            except images.ImageProblem as e:
                facts["error"] = str(e)[:MAX_ERROR]
            except OSError:
                pass
        out.append((facts, thumb))
    return out


def fit(frame, described):
    """Put *described* (:func:`describe_files`) on the offer *frame*: each image's facts on its item, then the
    previews, as many as fit its line with LINE_MARGIN to spare."""
    room = wire.MAX_LINE - LINE_MARGIN - len(wire.encode(frame))
    for item, (facts, _) in zip(frame["items"], described):
        if facts is not None:
            cost = len(jsonbody.dumps(facts)) + len(',"image":')
            if cost > room:
                break
            item["image"] = facts
            room -= cost
    previews = []
    for index, (_, thumb) in enumerate(described):
        if thumb is not None and "image" in frame["items"][index] and len(previews) < MAX_PREVIEWS:
            entry = {"i": index, "jpeg": base64.b64encode(thumb).decode("ascii")}
            cost = len(jsonbody.dumps(entry)) + len(',"previews":[]')
            if cost <= room:
                previews.append(entry)
                room -= cost
    if previews:
        frame["previews"] = previews


# -- the receiver's side: what came ------------------------------------------------------------------------------

def clean_facts(value):
    """``(facts, None)`` if *value* is image facts as a sender may offer them, else ``(None, why not)``."""
    if not isinstance(value, dict) or not set(value) <= {"format", "width", "height", "error"}:
        return None, "image facts must be an object of format, width, height and error"
    if value.get("format") not in images.FORMATS:
        return None, "an image's format must be one of %s" % ", ".join(images.FORMATS)
    sides = [value.get(k) for k in ("width", "height")]
    if sides != [None, None] and not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_SIDE
                                         for n in sides):
        return None, "an image's width and height must be whole numbers from 1 to %d" % MAX_SIDE
    error = value.get("error")
    if error is not None and not (isinstance(error, str) and len(error) <= MAX_ERROR):
        return None, "an image's error must be a text of at most %d characters" % MAX_ERROR
    if sides == [None, None] and error is None:
        return None, "image facts need a width and height, or an error"
    return dict(value), None


def clean_previews(frame, items):
    """``([(index, jpeg bytes)], why some were dropped or None)``: the previews of *frame* in their right shape,
    each for an image of *items* (whether they decode is checked later, in a thread)."""
    given = frame.get("previews")
    if given is None:
        return [], None
    if not isinstance(given, list) or len(given) > MAX_PREVIEWS:
        return [], "'previews' must be a list of at most %d" % MAX_PREVIEWS
    out, seen, why = [], set(), None
    for entry in given:
        if not isinstance(entry, dict) or set(entry) != {"i", "jpeg"}:
            why = "a preview must be an object of i and jpeg"
            continue
        index, data = entry["i"], entry["jpeg"]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(items) or index in seen:
            why = "a preview must name a file of the offer, once"
            continue
        facts = items[index].get("image") or {}
        if "width" not in facts or "error" in facts:
            why = "a preview must be of a file offered as an image"
            continue
        if not isinstance(data, str) or len(data) > MAX_B64:
            why = "a preview must be at most %d characters of base64" % MAX_B64
            continue
        try:
            jpeg = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            why = "a preview must be base64"
            continue
        seen.add(index)
        out.append((index, jpeg))
    return out, why


def check_previews(found):
    """``([(index, jpeg)] of *found* that are previews, why one was not or None)``. Blocks: in a thread."""
    ok, why = [], None
    for index, jpeg in found:
        try:
            images.check_preview(jpeg)
            ok.append((index, jpeg))
        except images.ImageProblem as e:
            why = str(e)
    return ok, why


# -- the receiver's side: what landed ----------------------------------------------------------------------------

def inspect_landed(inbox, saved, claimed):
    """What the landed file *saved* (inbox-relative) is as an image (:func:`p2pd.core.images.inspect`), opened
    without following a link; None if it is not one and its offer (*claimed*, the facts) did not say it was.
    Blocks: in a thread."""
    try:
        with inbox.open_landed(saved) as f:
            found = images.inspect(f)
    except (OSError, P2PDError) as e:
        found = {"check": "invalid", "problem": "cannot read it to check it: %s" % (getattr(e, "strerror", None)
                                                                                   or e)} if claimed else None
    if found is None and claimed:
        found = {"format": claimed.get("format"), "check": "invalid",
                 "problem": "not a valid image: not a PNG, JPEG, GIF or WEBP image"}
    return found


class Previews:
    """The images of *manager*'s transfers (a :class:`~p2pd.peer.files.manager.Transfers`): the sender's facts
    and previews, the receiver's checks of what came and of what landed, and the previews kept for
    ``p2pctl preview``."""

    def __init__(self, manager):
        self.m = manager
        self.one_at_a_time = defer.DeferredSemaphore(1)

    def _run(self, f, *args):
        return self.one_at_a_time.run(self.m.threads.run, f, *args)

    async def describe(self, local):
        """:func:`describe_files` of the files at *local*, in a thread (nothing, if that fails)."""
        try:
            return await self._run(describe_files, local)
        except Exception:
            log.failure("describing the images of an offer failed")
            return [(None, None)] * len(local)

    def take_facts(self, peer, frame, items):
        """Put on *items* the image facts of the offer *frame* that are in their right shape (one log line for
        those that are not)."""
        dropped, why = 0, None
        for item, given in zip(items, frame["items"]):
            if "image" in given:
                facts, problem = clean_facts(given["image"])
                if facts is None:
                    dropped, why = dropped + 1, why or problem
                else:
                    item["image"] = facts
        if dropped:
            log.warn("dropped the image facts of {n} file(s) offered by {peer} in {tid}: {why}", n=dropped,
                     peer=peer, tid=frame["tid"], why=why)

    def receive(self, t, frame):
        """Check the previews of the offer *frame* of the incoming transfer *t* (in a thread) and keep those that
        pass. A Deferred that fires (with None, never failing) once that is done."""
        found, why = clean_previews(frame, t.items)
        if why:
            log.warn("dropped a preview offered by {peer} in {tid}: {why}", peer=t.peer, tid=t.tid, why=why)
        t.record["previews"] = []
        if not found:
            return defer.succeed(None)
        d = self._run(check_previews, found)
        d.addCallback(self._keep, t)
        d.addErrback(lambda f: log.failure("checking the previews of {tid} failed", f, tid=t.tid))
        return d

    def _keep(self, result, t):
        ok, why = result
        if why:
            log.warn("dropped a preview offered by {peer} in {tid}: {why}", peer=t.peer, tid=t.tid, why=why)
        now = now_ms(self.m.clock)
        for index, jpeg in ok:
            self.m.storage.put_preview(t.tid, index, jpeg, now)
        if ok:
            t.record["previews"] = [index for index, _ in ok]
            t.save()

    def landed(self, t, index):
        """File *index* of the incoming transfer *t* landed: if it is an image by its first bytes or by its
        offer, check it in a thread, record what was found and tell the watchers."""
        item = t.items[index]
        d = self._run(inspect_landed, self.m.inbox, t.record["saved"][index], item.get("image"))
        d.addCallback(self._checked, t, index)
        d.addErrback(lambda f: log.failure("checking {tid}'s file {index} failed", f, tid=t.tid, index=index))

    def _checked(self, found, t, index):
        if found is None:
            return
        item, saved = t.items[index], t.record["saved"][index]
        item["checked"] = found
        t.save()
        if found["check"] != "ok":
            log.info("received {saved} from {peer}: {problem}", saved=saved, peer=t.peer, problem=found["problem"])
        self.m.events.emit(dict(found, event="image", tid=t.tid, peer=t.peer, direction="in", name=item["path"],
                                saved=saved, inbox=self.m.inbox.path))

    def get(self, tid, index=None):
        """The kept preview of file *index* (default: the first that has one) of transfer *tid*: ``{"tid",
        "index", "name", "image", "jpeg": base64, "bytes"}``; NotFound, saying why, if there is none."""
        live = self.m.live.get(tid)
        record = live.record if live is not None else self.m.storage.get_transfer(tid)
        if record is None:
            raise NotFound("no transfer %s (p2pctl transfers lists them)" % tid)
        items, kept = record["items"], record.get("previews") or []
        if index is None:
            index = kept[0] if kept else 0
        if not 0 <= index < len(items):
            raise NotFound("transfer %s has no file %d: it has %d" % (tid, index + 1, len(items)))
        name = items[index]["path"]
        facts = items[index].get("image") or {}
        jpeg = self.m.storage.preview(tid, index) if index in kept else None
        if jpeg is not None:
            return {"tid": tid, "index": index, "name": name, "image": facts, "bytes": len(jpeg),
                    "jpeg": base64.b64encode(jpeg).decode("ascii")}
        if record["direction"] != "in":
            raise NotFound("transfer %s is one you sent: previews are kept of the offers you receive" % tid)
        if index in kept:
            raise NotFound("the preview of %s was removed: the newest %d are kept" % (name, KEEP))
        if not facts:
            raise NotFound("%s has no preview: the sender did not offer it as an image" % name)
        if "error" in facts:
            raise NotFound("%s has no preview: the sender could not read it (%s)" % (name, facts["error"]))
        raise NotFound("%s came without a preview (an offer carries %d at most)" % (name, MAX_PREVIEWS))
