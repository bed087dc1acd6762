"""Presentation-attack detection (MiniFASNet V2 + V1SE, pipeline/analyze/faces/antispoof.py) on the project's
attack clips: the threshold chosen on calibration clips, APCER / BPCER (ISO/IEC 30107-3) on held-apart ones,
per frame and per attempt, face-size sensitivity, and the CPU cost per face beside the embedder's.

    python benchmarks/eval_pad.py [--data ../shared/data/liveness] [--fps 3] [--seconds 5] [--cache FILE]

Data: ``liveness/attacks`` (MANIFEST.md "presentation attacks": 6 attack clips, 4 genuine clips of the same
people; rotation metadata applied) and ``liveness/real.mov`` (genuine). Each clip is sampled at ``--fps``
(the door camera's detect_fps) over its first ``--seconds``; the largest face of each frame is scored.

- Calibration clips: the woman1, beardman and lestari pairs (genuine + attack of the same person).
- Held apart (never used to choose anything): the woman2 pair, the youngman and manikantha replays, real.mov.
- Threshold: midway (on the 0.05 grid) between the smallest value at which no calibration attack attempt
  passes and the largest at which every calibration genuine attempt opens within 3 s.
- Per frame: APCER = attack frames scored real / attack frames; BPCER = genuine frames scored attack /
  genuine frames. Per attempt (one clip = one presentation), with the door's rule: an attack succeeds when
  ``k`` consecutive analysed frames pass before 2 frames were refused (a face with 2 refused frames cannot
  vote while in view); a genuine attempt is refused when that does not happen within its first 3 s.
- Face size: every scored frame rescaled so that the face is 60, 90, 130 and 200 px, then rescored.
- Cost: PAD (both models, one face) vs the embedder (alignment + dlib ResNet, one face), the same frames,
  same process, wall time per face (median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.analyze.doors.policy import ATTACK_FRAMES_TO_REFUSE
from pipeline.analyze.faces.antispoof import AntiSpoof
from pipeline.analyze.faces.enroll import FaceEngine
from pipeline.config.faces import FacesConfig
from pipeline.ingest.clip_frames import clip_frames

CALIBRATION = (
    "tdp_genuine_woman1.mp4",
    "tdp_replay_cam-realme6s_screen-realme6pro_woman1.mp4",
    "tdp_genuine_beardman.mov",
    "tdp_replay_cam-iphone11_screen-note10lite_beardman.mov",
    "lestari_genuine.mp4",
    "lestari_photo_on_phone_attack.mp4",
)
SIZES = (60, 90, 130, 200)


def is_attack(name: str) -> bool:
    return "genuine" not in name and name != "real.mov"


def score_clips(data: Path, fps: float, seconds: float, cache: Path) -> dict[str, dict]:
    """Scores per clip, kept in ``cache`` after every clip (a rerun resumes where it stopped)."""
    engine = FaceEngine.from_config(FacesConfig(detector_min_face_px=80))
    pad = AntiSpoof()
    clips = sorted((data / "attacks").iterdir()) + [data / "real.mov"]
    out: dict[str, dict] = json.loads(cache.read_text()) if cache.is_file() else {}
    cost = out.setdefault("__cost__", {"pad_s": [], "embed_s": []})
    pad_s: list[float] = cost["pad_s"]
    emb_s: list[float] = cost["embed_s"]
    for clip in clips:
        if clip.name in out:
            continue
        rec: dict = {"attack": is_attack(clip.name), "t": [], "score": [], "face_px": [], "sizes": {}}
        for t, img in clip_frames(clip, fps=fps, end=seconds):
            dets = engine.detect(img)
            if not len(dets):
                continue
            j = int(np.argmax(dets.boxes[:, 2] - dets.boxes[:, 0]))
            one = dets.select(np.array([j]))
            box = one.boxes[0]
            t0 = time.perf_counter()
            s = float(pad.score(img, box[None])[0])
            t1 = time.perf_counter()
            engine.embed(img, one)
            t2 = time.perf_counter()
            pad_s.append(t1 - t0)
            emb_s.append(t2 - t1)
            side = float(min(box[2] - box[0], box[3] - box[1]))
            rec["t"].append(round(t, 3))
            rec["score"].append(s)
            rec["face_px"].append(round(side, 1))
            for size in SIZES:
                f = size / side
                small = cv2.resize(
                    img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
                )
                rec["sizes"].setdefault(str(size), []).append(float(pad.score(small, (box * f)[None])[0]))
        out[clip.name] = rec
        cache.write_text(json.dumps(out))
        print(f"scored {clip.name}: {len(rec['score'])} frames", flush=True)
    return out


def passes_k(scores: list[float], thr: float, k: int) -> bool:
    """The door's rule (pipeline/analyze/doors/policy.py) for one face in view: k frames in a row at or above
    ``thr`` before ATTACK_FRAMES_TO_REFUSE frames below it."""
    run = refused = 0
    for s in scores:
        if s >= thr:
            run += 1
        else:
            run, refused = 0, refused + 1
        if refused >= ATTACK_FRAMES_TO_REFUSE:
            return False
        if run >= k:
            return True
    return False


def rates(clips: dict[str, dict], names: list[str], thr: float, k: int, key: str = "score") -> dict:
    af = [
        s
        for n in names
        if clips[n]["attack"]
        for s in (clips[n][key] if key == "score" else clips[n]["sizes"][key])
    ]
    gf = [
        s
        for n in names
        if not clips[n]["attack"]
        for s in (clips[n][key] if key == "score" else clips[n]["sizes"][key])
    ]
    a_att = [n for n in names if clips[n]["attack"]]
    g_att = [n for n in names if not clips[n]["attack"]]

    def seq(n: str) -> list[float]:
        return clips[n][key] if key == "score" else clips[n]["sizes"][key]

    a_pass = sum(passes_k(seq(n), thr, k) for n in a_att)
    g_fail = sum(
        not passes_k([s for s, t in zip(seq(n), clips[n]["t"], strict=True) if t < 3.0], thr, k)
        for n in g_att
    )
    return {
        "apcer_frame": (sum(s >= thr for s in af), len(af)),
        "bpcer_frame": (sum(s < thr for s in gf), len(gf)),
        "apcer_attempt": (a_pass, len(a_att)),
        "bpcer_attempt": (g_fail, len(g_att)),
    }


def fmt(pair: tuple[int, int]) -> str:
    n, d = pair
    return f"{n}/{d} ({100.0 * n / d:.1f} %)" if d else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "liveness")
    )
    ap.add_argument("--fps", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/vidpipe_pad_scores.json")
    args = ap.parse_args()
    clips = score_clips(Path(args.data), args.fps, args.seconds, Path(args.cache))
    cost = clips.pop("__cost__")
    names = sorted(clips)
    cal = [n for n in names if n in CALIBRATION]
    held = [n for n in names if n not in CALIBRATION]
    grid = [round(x, 2) for x in np.arange(0.05, 1.0, 0.05)]
    safe = [t for t in grid if rates(clips, cal, t, args.k)["apcer_attempt"][0] == 0]
    open_ = [t for t in grid if rates(clips, cal, t, args.k)["bpcer_attempt"][0] == 0]
    low, high = (min(safe) if safe else 0.95), (max(open_) if open_ else 0.05)
    thr = round((low + high) / 2 / 0.05) * 0.05
    print(
        f"threshold {thr:.2f}: midway between the smallest with no calibration attack attempt passing ({low:.2f}) "
        f"and the largest with every calibration genuine attempt opening within 3 s ({high:.2f})"
    )
    print("\n| clip | kind | set | frames | face px (median) | score p10 / median / p90 |")
    print("|---|---|---|---|---|---|")
    for n in names:
        c = clips[n]
        s = np.array(c["score"])
        p = np.percentile(s, [10, 50, 90]) if len(s) else [float("nan")] * 3
        print(
            f"| {n} | {'attack' if c['attack'] else 'genuine'} | {'calibration' if n in cal else 'held apart'} | "
            f"{len(s)} | {statistics.median(c['face_px']) if c['face_px'] else '-'} | "
            f"{p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} |"
        )
    print(
        f"\n| set | APCER per frame | BPCER per frame | APCER per attempt | BPCER per attempt (k={args.k}, 3 s) |"
    )
    print("|---|---|---|---|---|")
    for label, group in (("calibration", cal), ("held apart", held), ("all", names)):
        r = rates(clips, group, thr, args.k)
        print(
            f"| {label} | {fmt(r['apcer_frame'])} | {fmt(r['bpcer_frame'])} | {fmt(r['apcer_attempt'])} | {fmt(r['bpcer_attempt'])} |"
        )
    print("\nFace size (every frame rescaled so the face is this many px; all clips, same threshold):\n")
    print("| face px | APCER per frame | BPCER per frame | APCER per attempt | BPCER per attempt |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        r = rates(clips, names, thr, args.k, key=str(size))
        print(
            f"| {size} | {fmt(r['apcer_frame'])} | {fmt(r['bpcer_frame'])} | {fmt(r['apcer_attempt'])} | {fmt(r['bpcer_attempt'])} |"
        )
    pad_ms = 1000 * statistics.median(cost["pad_s"])
    emb_ms = 1000 * statistics.median(cost["embed_s"])
    print(
        f"\nCPU cost per face (median of {len(cost['pad_s'])} faces, same run): PAD (both models) {pad_ms:.1f} ms, "
        f"embedding (align + dlib ResNet) {emb_ms:.1f} ms: PAD = {pad_ms / emb_ms:.2f} x the embedding"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
