"""Face access analyzer: faces in each frame -> identities -> door decisions (signed, audited) and
faces.unknown events with a saved crop.

Runs on the camera's analytics thread (see pipeline/analyze/analyzers.py). Anything that goes wrong while
analysing a frame becomes a signed ``denied`` decision for every door of the camera (fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.analyze.doors.audit import CHECKPOINT_EVENT, AuditLog, open_audit_log
from pipeline.analyze.doors.lockdown import Lockdown, lockdown_path
from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.analyze.doors.second_factor import SecondFactorListener, door_readers
from pipeline.analyze.doors.signing import sign_event
from pipeline.analyze.faces.antispoof import AntiSpoof, shared_antispoof
from pipeline.analyze.faces.enroll import FaceEngine, shared_engine
from pipeline.analyze.faces.gallery import Gallery
from pipeline.analyze.faces.liveness import Evidence, LivenessSettings, LivenessTracker
from pipeline.analyze.faces.matcher import Match, Matcher
from pipeline.analyze.faces.quality import crop_face, face_side, sharpness
from pipeline.analyze.faces.tracks import FaceTracker
from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.core.events import Event
from pipeline.core.types import FaceMatch, FrameResult
from pipeline.ingest.clip_writer import ClipRequest, ClipResult, ClipWriter, clip_name

log = logging.getLogger(__name__)

# Used only when neither the config nor `faces calibrate` gives a threshold for the model: the calibrated
# operating point of the dlib ResNet on the project's open-set evaluation (BENCHMARKS.md), rounded down.
DEFAULT_THRESHOLD = 0.45


def operating_point(cfg: FacesConfig, gallery: Gallery, model_id: str) -> tuple[float, float, str]:
    """(threshold, margin, where they came from): the config's threshold when set, else the one `faces
    calibrate` stored with the model, else the built-in default."""
    if cfg.threshold is not None:
        return cfg.threshold, cfg.margin, "faces.threshold in the config"
    cal = gallery.calibration(model_id)
    if cal is not None:
        return cal[0], cal[1], f"calibrated for {model_id} (faces calibrate)"
    return DEFAULT_THRESHOLD, cfg.margin, "built-in default (not calibrated: run `faces calibrate`)"


class _Door:
    def __init__(
        self,
        cfg: DoorConfig,
        groups: dict[str, list[str]],
        base_dir: Path | None,
        pad_threshold: float,
        redis_url: str | None = None,
        redis_prefix: str = "vidpipe",
    ) -> None:
        self.cfg = cfg
        self.policy = DoorPolicy(cfg, groups, pad_threshold=pad_threshold)
        self.key = cfg.secret_bytes()  # raises now (naming the door) rather than at the first decision
        path = Path(cfg.audit_log)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        # with Redis: its copy of the checkpoint history joins the check (a log deleted with its side file)
        self.audit: AuditLog = open_audit_log(path, redis_url, redis_prefix)
        self.lockdown = Lockdown(lockdown_path(path))  # consulted before every grant (fails closed)


class FaceAccessAnalyzer:
    def __init__(
        self,
        faces: FacesConfig,
        doors: list[DoorConfig],
        camera_id: str,
        engine: FaceEngine | None = None,
        clock: Callable[[], float] = time.time,
        base_dir: str | Path | None = None,
        redis_url: str | None = None,
        clips: ClipWriter | None = None,
        redis_prefix: str = "vidpipe",
    ) -> None:
        """``base_dir``: relative paths in the config (gallery, audit log, crops) are resolved against it
        (default: the working directory). ``clips``: when given (and clips are enabled for this camera),
        every decision names a clip and a signed ``doors.evidence`` record carries its sha256."""
        self.cfg = faces
        self.clips = clips if clips is not None and clips.settings_for(camera_id).enabled else None
        self.camera_id = camera_id
        self.clock = clock
        base = Path(base_dir) if base_dir is not None else None
        self._resolve = lambda p: Path(p) if base is None or Path(p).is_absolute() else base / p
        pad_threshold = faces.liveness.pad_threshold
        self.doors = [
            _Door(d, faces.groups, base, pad_threshold, redis_url, redis_prefix)
            for d in doors
            if camera_id in d.cameras
        ]
        self.engine = engine or shared_engine(faces)
        self.gallery = Gallery(self._resolve(faces.gallery_path))
        self._gallery_version: tuple | None = None
        self._gallery_checked = 0.0
        self.matcher = Matcher({}, DEFAULT_THRESHOLD)
        self.threshold_source = ""
        self._reload_gallery(force=True)
        window = max((d.cfg.window_s for d in self.doors), default=3.0)
        self.tracker = FaceTracker(max_gap_s=window)
        self.liveness: LivenessTracker | None = None
        self.antispoof: AntiSpoof | None = None
        if any(d.policy.uses_pad for d in self.doors):
            self.antispoof = shared_antispoof(faces.device)
        self.last_faces: list[dict] = []  # per face of the last frame: track, PAD score, liveness (try-door)
        if any(d.cfg.liveness.removeprefix("pad").removeprefix("+") not in ("", "off") for d in self.doors):
            from pipeline.models.dlib_shape import ShapePredictor

            lv = faces.liveness
            settings = LivenessSettings(lv.blink_ear, lv.blink_open_delta, lv.motion_min_residual, window)
            self.liveness = LivenessTracker(settings, ShapePredictor.default())
        self.second_factor: SecondFactorListener | None = None
        channels = [d.cfg.second_factor.channel for d in self.doors if d.cfg.second_factor is not None]
        if channels:
            if not redis_url:
                raise ValueError(
                    f"camera {camera_id}: a door needs a second factor on Redis channel(s) {channels}, "
                    "but no redis.url is configured to listen on"
                )
            readers = door_readers(d.cfg for d in self.doors)  # raises now, naming a door without keys
            self.second_factor = SecondFactorListener(redis_url, channels, readers, clock=clock)
            for d in self.doors:
                d.policy.second_factor = self.second_factor.check
        self._crop_dir = self._resolve(faces.unknown_crops.dir)
        self._last_unknown = -float("inf")

    # ---- analyzer protocol ------------------------------------------------------------------------------

    def process(self, result: FrameResult) -> list[Event]:
        frame = result.frame
        now = self.clock()
        self.last_faces = []
        try:
            self._reload_gallery()
            dets = self.engine.detect(frame.image)
            if len(dets) > self.cfg.max_faces_per_frame:
                order = np.argsort(-(dets.boxes[:, 2] - dets.boxes[:, 0]))[: self.cfg.max_faces_per_frame]
                dets = dets.select(order)
            embs = self.engine.embed(frame.image, dets) if len(dets) else np.zeros((0, 128), np.float32)
            matches = [self.matcher.identify(e) for e in embs]
            boxes = dets.boxes
            track_ids = self.tracker.assign(boxes, frame.capture_time, embs, [m.identity for m in matches])
            evidence = self._liveness(frame.image, boxes, track_ids, frame.capture_time)
            pads = (
                self.antispoof.score(frame.image, boxes)
                if self.antispoof is not None and len(boxes)
                else None
            )
            if pads is not None:
                for tid, p in zip(track_ids, pads, strict=True):
                    if p < self.cfg.liveness.pad_threshold:
                        self.tracker.mark_attack(tid)
            sharp = [sharpness(frame.image, b) for b in boxes]
        except Exception as exc:  # noqa: BLE001 - any failure denies, loudly
            log.exception("camera %s: face analysis failed on frame %d", self.camera_id, frame.seq)
            return self._decisions(
                result,
                [
                    d
                    for door in self.doors
                    for d in door.policy.error(type(exc).__name__ + ": " + str(exc)[:200], now)
                ],
                now,
            )

        result.faces = [
            FaceMatch(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                identity=m.identity,
                nearest=m.nearest,
                distance=None if m.distance == float("inf") else m.distance,
                margin=None if m.margin == float("inf") else m.margin,
                track_id=track_ids[i],
                reason=m.reason,
            )
            for i, (b, m) in enumerate(zip(boxes, matches, strict=True))
        ]
        votes = [
            FaceVote(
                m.identity,
                m.distance,
                face_side(boxes[i]),
                track_id=track_ids[i],
                sharpness=sharp[i],
                blink_at=evidence[i].blink_at,
                motion_at=evidence[i].motion_at,
                reason=m.reason,
                pad=None if pads is None else float(pads[i]),
                follows=self.tracker.follows(track_ids[i]),
                attacks=self.tracker.attacks(track_ids[i]),
            )
            for i, m in enumerate(matches)
        ]
        self.last_faces = [
            {
                "track": v.track_id,
                "identity": v.identity,
                "distance": None if v.distance == float("inf") else round(v.distance, 4),
                "face_px": round(v.face_px, 1),
                "pad": None if v.pad is None else round(v.pad, 4),
                "blink_at": v.blink_at,
                "motion_at": v.motion_at,
                "follows": v.follows,
                "attack_frames": v.attacks,
            }
            for v in votes
        ]
        decisions = [d for door in self.doors for d in door.policy.observe(frame.capture_time, votes, now)]
        events = self._decisions(result, decisions, now)
        # a face that just matched someone and turned away is not a stranger (FaceTracker.follows)
        unknown = [i for i, m in enumerate(matches) if m.identity is None and votes[i].follows is None]
        if (
            unknown
            and self.cfg.unknown_crops.enabled
            and now - self._last_unknown >= self.cfg.unknown_crops.cooldown_s
        ):
            self._last_unknown = now
            events.append(self._unknown_event(result, dets.boxes, unknown, matches))
        return events

    def on_camera_status(self, status: str) -> list[Event]:
        now = self.clock()
        decisions = [d for door in self.doors for d in door.policy.camera_status(status, now)]
        return self._decisions(None, decisions, now)

    def close(self) -> list[Event]:
        self.gallery.close()
        if self.second_factor is not None:
            self.second_factor.close()
        return []

    # ---- helpers ---------------------------------------------------------------------------------------

    def _reload_gallery(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._gallery_checked < self.cfg.gallery_reload_s:
            return
        self._gallery_checked = now
        version = (self.gallery.version(), self.gallery.calibration(self.engine.model_id))
        if force or version != self._gallery_version:
            threshold, margin, source = operating_point(self.cfg, self.gallery, self.engine.model_id)
            self.matcher = Matcher(self.gallery.templates(self.engine.model_id), threshold, margin)
            self._gallery_version = version
            self.threshold_source = source
            log.info(
                "camera %s: gallery loaded, %d people; threshold %.3f, margin %.3f: %s",
                self.camera_id,
                len(self.matcher),
                threshold,
                margin,
                source,
            )

    def _liveness(
        self, image: np.ndarray, boxes: np.ndarray, track_ids: list[int], t: float
    ) -> list[Evidence]:
        """Liveness evidence per face (empty evidence when no door asks for liveness)."""
        if self.liveness is None or not len(boxes):
            return [Evidence()] * len(boxes)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return [
            self.liveness.observe(tid, t, self.liveness.landmarks(grey, box))
            for tid, box in zip(track_ids, boxes, strict=True)
        ]

    def _decisions(self, result: FrameResult | None, decisions: list[dict], now: float) -> list[Event]:
        events = []
        by_id = {d.cfg.id: d for d in self.doors}
        for dec in decisions:
            door = by_id[dec["door_id"]]
            if dec["decision"] == "granted" and door.lockdown.is_locked(door.cfg.id):
                dec = {**dec, "decision": "denied", "reason": "door locked down"}
            frame = result.frame if result else None
            ev = Event.for_frame("doors.decision", frame, dec, camera_id=self.camera_id, ts=now)
            clip = self._plan_clip(ev, frame.pts if frame is not None else None)
            if clip is not None:
                ev.data["clip"] = clip.name  # signed: the record names its evidence before it exists
            ev = sign_event(ev, door.cfg.id, door.key, now=now)
            door.audit.append(ev.model_dump(mode="json"))
            log.info("door %s: %s %s (%s)", door.cfg.id, dec["decision"], dec["person"] or "-", dec["reason"])
            events.append(ev)
            events.extend(self._checkpoint(door))
            if clip is not None and self.clips is not None:
                clip.on_written = hook = self._evidence_hook(door, ev)
                if not self.clips.request(clip):  # the gap is audited too
                    events.extend(hook(None, "the clip writer's queue was full: no clip was made"))
        return events

    def _checkpoint(self, door: _Door) -> list[Event]:
        if door.audit.last_checkpoint is None:
            return []
        # off-host copy: truncating the log is detected
        return [Event(type=CHECKPOINT_EVENT, camera_id=self.camera_id, data=door.audit.last_checkpoint)]

    def _plan_clip(self, ev: Event, pts: float | None) -> ClipRequest | None:
        """The clip of a decision: around its frame, or (no frame: the camera was lost) the ring's end."""
        if self.clips is None:
            return None
        try:
            ring = self.clips.rings.get(self.camera_id)
            t = pts if pts is not None else (ring.newest_t() if ring is not None else None)
            if t is None:
                return None
            s = self.clips.settings_for(self.camera_id)
            route = self.clips.route(self.camera_id)  # the main stream's ring, when the camera has one up
            name = clip_name(self.camera_id, "door", ev.event_id, ev.ts, route.suffix)
            return route.request(self.camera_id, name, t, t, s.pre_s, s.post_s)
        except Exception:  # noqa: BLE001 - evidence must never cost a decision its signature
            log.exception("camera %s: no clip for decision %s", self.camera_id, ev.event_id)
            return None

    def _evidence_hook(self, door: _Door, decision: Event):  # noqa: ANN202 - a closure
        """Runs on the clip writer's thread once the clip is on disk (or could not be written): a signed,
        audited ``doors.evidence`` record with the clip's sha256, chained after its decision."""

        def hook(result: ClipResult | None, error: str) -> list[Event]:
            data = {
                "door_id": door.cfg.id,
                "decision_event_id": decision.event_id,
                "decision": decision.data.get("decision"),
                "person": decision.data.get("person"),
                "clip": decision.data.get("clip"),
                "sha256": result.sha256 if result else None,
                "bytes": result.size if result else 0,
                "duration_s": round(result.duration_s, 3) if result else 0.0,
                "start_pts": round(result.start_t, 4) if result else None,
                "end_pts": round(result.end_t, 4) if result else None,
                "error": error or None,
            }
            if result is not None and result.stream is not None:  # the camera has a record_source
                data.update(stream=result.stream, width=result.width, height=result.height)
            ev = Event(type="doors.evidence", camera_id=self.camera_id, data=data)
            ev = sign_event(ev, door.cfg.id, door.key)
            door.audit.append(ev.model_dump(mode="json"))
            return [ev, *self._checkpoint(door)]

        return hook

    def _unknown_event(
        self, result: FrameResult, boxes: np.ndarray, idx: list[int], matches: list[Match]
    ) -> Event:
        frame = result.frame
        faces = []
        for i in idx:
            path = self._save_crop(frame.image, boxes[i], f"{self.camera_id}_{frame.seq}_{i}")
            m = matches[i]
            faces.append(
                {
                    "box": [round(float(v), 1) for v in boxes[i]],
                    "crop": str(path) if path else None,
                    "nearest": m.nearest,
                    "distance": None if m.distance == float("inf") else round(m.distance, 4),
                }
            )
        return Event.for_frame("faces.unknown", frame, {"faces": faces}, camera_id=self.camera_id)

    def _save_crop(self, image: np.ndarray, box: np.ndarray, stem: str) -> Path | None:
        try:
            self._crop_dir.mkdir(parents=True, exist_ok=True)
            path = self._crop_dir / f"{stem}_{int(time.time() * 1000)}.jpg"
            if not cv2.imwrite(str(path), crop_face(image, box, margin=0.25)):
                raise OSError("cv2.imwrite failed")
            self._prune_crops()
            return path.resolve()
        except OSError:
            log.exception("camera %s: cannot save unknown-face crop in %s", self.camera_id, self._crop_dir)
            return None

    def _prune_crops(self) -> None:
        """Keep at most max_files crops, none older than max_age_days (other cameras may prune too)."""
        rc = self.cfg.unknown_crops
        files = []
        for p in self._crop_dir.glob("*.jpg"):
            try:
                files.append((p.stat().st_mtime, p))
            except FileNotFoundError:
                continue
        files.sort()
        cutoff = time.time() - rc.max_age_days * 86400
        for i, (mtime, p) in enumerate(files):
            if i < len(files) - rc.max_files or mtime < cutoff:
                p.unlink(missing_ok=True)
