"""Non-maximum suppression and box IoU on the CPU. The one place NMS and IoU live for CPU paths.

Boxes are (N, 4) x1 y1 x2 y2. Hard NMS keeps exactly what ``torchvision.ops.nms`` keeps, ties included,
because every IoU is computed with the float32 operations of torchvision's C++ kernel, in its order, and
compared with the threshold as the kernel does (in double precision):

- :func:`nms` (class-agnostic) walks the boxes in score order (stable sort: equal scores go lower index
  first) in blocks of :data:`BLOCK`: torchvision's kernel (``torch.ops.torchvision.nms``) settles a block,
  then one vectorised IoU pass drops every later box that a newly kept box suppresses. Greedy NMS decides a
  box from the boxes before it alone, so this is exactly the kernel's result; it skips the kernel's scan of
  each kept box against every later box one at a time, which made it O(N·K) scalar work.
- :func:`batched_nms` (class-aware) runs NMS per class. Classes are grouped with one stable sort, never by
  shifting boxes apart by class: the shift (torchvision's "coordinate trick", and this module's until
  2026-11) rounds float32 coordinates at large offsets and changed the kept set (12415 vs 12416 of 100k
  boxes, 80 classes). A class with one box keeps it; classes of at most :data:`SMALL_GROUP` boxes are done all
  at once in NumPy (:func:`_small_groups_nms`) and larger ones by the kernel, one call per class (the
  blocked walk above :data:`GROUP_DIRECT` boxes).

The fast path for valid inputs (finite scores, x2 >= x1 and y2 >= y1, threshold in [0, 1]) is ONNX Runtime's
``NonMaxSuppression`` operator (:func:`_ort_select`; ONNX Runtime is already the project's inference engine):
greedy per class in C++, one call for every class, no torch. It computes each IoU with the same float32
operations as torchvision's kernel (intersection w * h of positive sides, ``(area_a + area_b) - inter``, one
division), compared with :func:`_float32_threshold`, takes boxes in score order with equal scores lower index
first, and checks a box only against the boxes kept before it, stopping at the first that suppresses it: on a
frame's clustered candidates that is 1-8x faster than torchvision's kernel, which scans every later box
(benchmarks/bench_nms.py). Inputs it cannot take (NaN or -inf scores, inverted or NaN boxes, thresholds outside
[0, 1]) go the paths below, which keep torchvision's result for any input.

Small inputs while torch is not loaded (up to :data:`NUMPY_PAIRS` same-class pairs, a detector's frame)
are suppressed in NumPy with the same float32 IoU (:func:`_small_groups_nms`): a run whose frames stay
small never imports torch (seconds of start-up). The first larger input loads the kernel, used from then on.

benchmarks/bench_nms.py times both against torchvision in the same run and checks the kept sets.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: classes with at most this many boxes are suppressed together in NumPy; larger ones by the blocked walk
SMALL_GROUP = 64
#: while torch is not loaded, inputs with up to this many same-class box pairs are suppressed in NumPy
#: (exact, :func:`_small_groups_nms`) rather than importing torch for them: that import is seconds of a
#: run's start-up (issue 24), and a detector's frame (tens to hundreds of candidates) stays far below it.
#: Once torch is loaded (a larger input, or :func:`warm_up`), the kernel paths are used for every size.
NUMPY_PAIRS = 50_000
#: boxes the C++ kernel settles at a time in the blocked walk (128 was fastest at 1k-100k boxes here)
BLOCK = 128
#: up to this many boxes (a class, or all of them class-agnostic) go to the kernel in one call: the
#: blocked walk pays for itself only above a few thousand boxes (bench_nms.py: 1.03x at 1k, 0.99x at 3k)
GROUP_DIRECT = 2048
#: columns per vectorised IoU pass of the blocked walk (bounds its memory to BLOCK x CHUNK floats)
CHUNK = 1 << 14


#: the ONNX Runtime path (:func:`_ort_select`) for the inputs it takes; tests switch it off to exercise the others
USE_ORT = True
#: the ONNX Runtime path builds one (classes x boxes) score matrix up to this many cells; above, one call per class
ORT_SCORE_CELLS = 1 << 21
#: ONNX graph with one ``NonMaxSuppression`` node (opset 11): inputs boxes (1, N, 4), scores (1, C, N),
#: max_per_class (1,) int64, iou (1,), score_min (1,); output selected (K, 3) int64 (batch, class, box).
#: Serialized bytes, so that a run does not import the ``onnx`` package (seconds of start-up) to build it;
#: tests/test_nms.py rebuilds it with ``onnx.helper`` and compares.
_ORT_NMS_MODEL = base64.b64decode(
    "CAc66gEKSwoFYm94ZXMKBnNjb3JlcwoNbWF4X3Blcl9jbGFzcwoDaW91CglzY29yZV9taW4SCHNlbGVjdGVkIhFOb25NYXhTdXBwcmVzc2lv"
    "bhIDbm1zWhkKBWJveGVzEhAKDggBEgoKAggBCgAKAggEWhgKBnNjb3JlcxIOCgwIARIICgIIAQoACgBaGwoNbWF4X3Blcl9jbGFzcxIKCggI"
    "BxIECgIIAVoRCgNpb3USCgoICAESBAoCCAFaFwoJc2NvcmVfbWluEgoKCAgBEgQKAggBYhgKCHNlbGVjdGVkEgwKCggHEgYKAAoCCANCBAoA"
    "EAs="
)
#: scores must be above this to be candidates (ONNX Runtime keeps ``score > score_min``): every finite float32
_SCORE_MIN = np.array([np.finfo(np.float32).min], np.float32)
_ORT_SESSION = None
_ORT_LOCK = threading.Lock()


def _ort_session():  # noqa: ANN202 - onnxruntime.InferenceSession
    """The NMS session, built once (a few ms), single-threaded: the operator is one sequential loop."""
    global _ORT_SESSION
    if _ORT_SESSION is None:
        with _ORT_LOCK:
            if _ORT_SESSION is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                _ORT_SESSION = ort.InferenceSession(
                    _ORT_NMS_MODEL, options, providers=["CPUExecutionProvider"]
                )
    return _ORT_SESSION


def _ort_takes(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> bool:
    """Whether ONNX Runtime's operator keeps exactly torchvision's set for this input.

    It drops candidates whose score is not above :data:`_SCORE_MIN` (NaN, -inf), reorders inverted corners
    (torchvision does not) and refuses thresholds outside [0, 1]. NaN propagates through ``min``, so one
    reduction per array checks each.
    """
    return (
        USE_ORT
        and 0.0 <= iou_threshold <= 1.0
        and bool(scores.min() > _SCORE_MIN[0])
        and bool((boxes[:, 2:] - boxes[:, :2]).min() >= 0)
    )


def _ort_select(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Kept box indices of greedy NMS per score row: ``scores`` is (C, N), a box takes part in the classes
    where its score is finite (-inf elsewhere). Returns (K, 3) rows (0, class row, box), each class's boxes
    in score order, equal scores lower index first."""
    n = boxes.shape[0]
    return _ort_session().run(
        None,
        {
            "boxes": boxes.reshape(1, n, 4),
            "scores": scores.reshape(1, -1, n),
            "max_per_class": np.array([n], np.int64),
            "iou": np.array([_float32_threshold(iou_threshold)], np.float32),
            "score_min": _SCORE_MIN,
        },
    )[0]


def _class_rows(cls: np.ndarray) -> tuple[np.ndarray, int]:
    """Each box's row among the classes present (0..k-1), and k. Small non-negative integer ids (a
    detector's) are counted with bincount, a few microseconds cheaper than ``np.unique``'s sort at 100 boxes."""
    if cls.dtype.kind in "iu" and cls.size and cls.min() >= 0 and cls.max() < 1 << 16:
        present = np.bincount(cls) > 0
        rank = np.cumsum(present) - 1
        return rank[cls], int(rank[-1]) + 1
    _, row = np.unique(cls, return_inverse=True)
    row = row.reshape(-1)
    return row, int(row.max()) + 1


def _ort_batched(boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS through ONNX Runtime: kept indices, highest score first, equal scores lower index first."""
    n = boxes.shape[0]
    row, k = _class_rows(cls)
    if k == 1:
        return _ort_select(boxes, scores, iou_threshold)[:, 2].copy()
    if k * n <= ORT_SCORE_CELLS:
        matrix = np.full((k, n), -np.inf, np.float32)
        matrix[row, np.arange(n)] = scores
        keep = _ort_select(boxes, matrix, iou_threshold)[:, 2]
    else:  # many classes and boxes: one call per class on its own boxes, memory O(N)
        by_class = np.argsort(row, kind="stable")
        cuts = np.flatnonzero(np.diff(row[by_class])) + 1
        parts = []
        for members in np.split(by_class, cuts):
            if members.shape[0] == 1:
                parts.append(members)
                continue
            sel = _ort_select(np.ascontiguousarray(boxes[members]), scores[members], iou_threshold)
            parts.append(members[sel[:, 2]])
        keep = np.concatenate(parts)
    return keep[np.lexsort((keep, -scores[keep]))]


def _float32_threshold(iou_threshold: float) -> np.float32:
    """The largest float32 <= ``iou_threshold``: for a float32 IoU x, ``x > it`` is the kernel's
    ``(double) x > iou_threshold`` (float32(0.6) = 0.60000002 rounds up; comparing with it would keep
    a box whose IoU is exactly 0.60000002)."""
    f = np.float32(iou_threshold)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > iou_threshold else f


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Pairwise IoU of x1y1x2y2 boxes, (len(a), len(b)), computed in ``dtype``.

    The one IoU of the project: NMS, metrics and MTCNN use float32, the tracker float64. Zero-area pairs
    give 0, never NaN; empty inputs give an empty matrix.
    """
    a = np.asarray(a, dtype).reshape(-1, 4)
    b = np.asarray(b, dtype).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, dtype(1e-12)), 0.0).astype(dtype)


def intersection_matrix(a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Pairwise intersection areas of x1y1x2y2 boxes, (len(a), len(b)); with :func:`box_area` it gives
    intersection over the smaller box (IoS), the measure tile merging uses for pieces of one object."""
    a = np.asarray(a, dtype).reshape(-1, 4)
    b = np.asarray(b, dtype).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return (wh[..., 0] * wh[..., 1]).astype(dtype)


_KERNEL = None


def _kernel():  # noqa: ANN202 - torch's OpOverloadPacket
    """torchvision's C++ NMS op, looked up once: resolving ``torch.ops.torchvision.nms`` goes through the
    op namespace's ``__getattr__`` on every access (microseconds that matter at 100 boxes). torch is
    imported here, not at module import: iou_matrix (tracking, metrics) needs only NumPy."""
    global _KERNEL
    if _KERNEL is None:
        import torch

        _load_torchvision_ops()
        _KERNEL = torch.ops.torchvision.nms.default
    return _KERNEL


def warm_up() -> None:
    """Load the NMS kernel now (torch: seconds on a busy machine): from then on every size goes through
    torchvision's kernel paths (benchmarks, and a caller that knows it will see large inputs)."""
    _kernel()


def _load_torchvision_ops() -> None:
    """Register torchvision's C++ ops (``torch.ops.torchvision.nms``) by loading its ``_C`` library alone.

    ``import torchvision`` also imports its models, datasets and torch._dynamo: seconds of start-up for one
    kernel. Falls back to the import when the library is not where the package keeps it.
    """
    import importlib.util
    import sys

    import torch

    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            libs = sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd"))
            if libs:
                try:
                    torch.ops.load_library(str(libs[0]))
                    return
                except (OSError, RuntimeError):
                    break
    import torchvision  # noqa: F401 - registers torch.ops.torchvision.nms


def _as_tensors(boxes: np.ndarray, scores: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy float32 tensors."""
    _kernel()
    import torch

    b = torch.from_numpy(np.ascontiguousarray(boxes, np.float32).reshape(-1, 4))
    s = torch.from_numpy(np.ascontiguousarray(scores, np.float32).reshape(-1))
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"nms: {b.shape[0]} boxes but {s.shape[0]} scores")
    return b, s


def _as_arrays(boxes: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    b = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
    s = np.ascontiguousarray(scores, np.float32).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{what}: {b.shape[0]} boxes but {s.shape[0]} scores")
    return b, s


def _numpy_first(pairs: int) -> bool:
    """Suppress in NumPy instead of loading torch: only while torch is not loaded, for small inputs."""
    return _KERNEL is None and pairs <= NUMPY_PAIRS


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Hard NMS. Returns kept indices (int64), highest score first, equal scores lower index first."""
    b, s = _as_arrays(boxes, scores, "nms")
    n = b.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    if _ort_takes(b, s, iou_threshold):
        return _ort_select(b, s, iou_threshold)[:, 2].copy()  # one class: already in score order
    if _numpy_first(n * (n - 1) // 2):
        order = _class_score_order(np.zeros(n, np.int64), s)
        return order[_small_groups_nms(b[order], np.array([0]), np.array([n]), iou_threshold)]
    tb, ts = _as_tensors(b, s)
    return _greedy(tb, ts, iou_threshold).numpy()


def _greedy(
    b: torch.Tensor, s: torch.Tensor, iou_threshold: float, direct: int = GROUP_DIRECT
) -> torch.Tensor:
    """Kept indices of greedy NMS over float32 tensors, in score order (see the module docstring).

    Up to ``direct`` boxes go to the kernel in one call: below a few hundred boxes the blocked walk's fixed
    cost outweighs what it saves.
    """
    n = b.shape[0]
    if n <= max(direct, BLOCK):
        return _kernel()(b, s, float(iou_threshold))
    import torch

    order = torch.sort(s, descending=True, stable=True).indices
    bs, ss = b[order], s[order]
    x1, y1, x2, y2 = (bs[:, k].contiguous() for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    thr = torch.tensor(_float32_threshold(iou_threshold))
    alive = torch.arange(n)
    kept = []
    while alive.numel():
        head, rest = alive[:BLOCK], alive[BLOCK:]
        new = head[_kernel()(bs[head], ss[head], float(iou_threshold))]
        kept.append(new)
        if rest.numel() == 0:
            break
        kx1, ky1, kx2, ky2, ka = (v[new][:, None] for v in (x1, y1, x2, y2, areas))
        survivors = []
        for start in range(0, rest.numel(), CHUNK):
            r = rest[start : start + CHUNK]
            w = (torch.minimum(kx2, x2[r]) - torch.maximum(kx1, x1[r])).clamp_(min=0)
            h = (torch.minimum(ky2, y2[r]) - torch.maximum(ky1, y1[r])).clamp_(min=0)
            inter = w.mul_(h)
            ovr = inter / ((ka + areas[r]) - inter)  # the kernel's (area_i + area_j) - inter
            survivors.append(r[~(ovr > thr).any(0)])
        alive = torch.cat(survivors)
    return order[torch.cat(kept)]


def _small_groups_nms(
    boxes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Keep-mask of greedy NMS within each group of consecutive rows, rows already in score order.

    The IoU of every pair (i before j) in a group uses the same float32 operations, in the same order, as
    torchvision's kernel: areas (x2 - x1) * (y2 - y1) unclipped, intersection clamped at 0, inter /
    (area_i + area_j - inter), compared as the kernel compares (:func:`_float32_threshold`). Greedy NMS is the one
    solution of "j is kept iff no kept i before it overlaps it"; iterating that rule from "all kept"
    reaches it after at most (longest chain of overlaps) rounds.
    """
    n = boxes.shape[0]
    counts = np.repeat(starts + lengths, lengths) - np.arange(n) - 1  # later rows in the same group
    total = int(counts.sum())
    keep = np.ones(n, bool)
    if total == 0:
        return keep
    first = np.repeat(np.arange(n), counts)
    second = np.arange(1, total + 1) - np.repeat(np.cumsum(counts) - counts - np.arange(n), counts)
    # 1-D contiguous columns and np.take: 2-D fancy indexing and strided ufuncs are ~10x slower here
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)

    def side(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        d = np.minimum(np.take(hi, first), np.take(hi, second))
        d -= np.maximum(np.take(lo, first), np.take(lo, second))
        return np.maximum(d, np.float32(0), out=d)

    inter = side(x1, x2) * side(y1, y2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ovr = inter / (np.take(areas, first) + np.take(areas, second) - inter)
    hit = ovr > _float32_threshold(iou_threshold)
    src, dst = first[hit], second[hit]
    if src.size == 0:
        return keep
    while True:
        suppressed = np.zeros(n, bool)
        suppressed[dst[keep[src]]] = True
        new_keep = ~suppressed
        if np.array_equal(new_keep, keep):
            return keep
        keep = new_keep


def _class_score_order(cls: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row order grouped by class, each group in the kernel's order: score descending, index ascending.

    One stable sort of a 64-bit key (class in the high half, the score's bits flipped to sort descending in
    the low half) instead of two sorts.
    """
    bits = (scores.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    ascending = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))  # IEEE order as unsigned ints
    cls = cls.astype(np.int64)
    key = ((cls - cls.min()).astype(np.uint64) << np.uint64(32)) | (~ascending).astype(np.uint64)
    return np.argsort(key, kind="stable")


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Returns kept indices, highest score first, equal scores lower index first: the set
    ``torchvision.ops.batched_nms`` keeps with its exact per-class path.
    """
    nb, sc = _as_arrays(boxes, scores, "batched_nms")
    n = nb.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    cls = np.asarray(class_ids).reshape(-1)
    if cls.shape[0] != n:
        raise ValueError(f"batched_nms: {n} boxes but {cls.shape[0]} class ids")
    if _ort_takes(nb, sc, iou_threshold):
        return _ort_batched(nb, sc, cls, iou_threshold)
    order = _class_score_order(cls, sc)
    sorted_cls = cls[order]
    cuts = np.flatnonzero(sorted_cls[1:] != sorted_cls[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    lengths = np.diff(np.concatenate([starts, [n]]))
    single = lengths == 1  # a class with one box keeps it: no IoU to compute
    kept_parts = [order[starts[single]]]
    multi = ~single
    # Small classes all at once in NumPy: the kernel's fixed cost (~20 us a call here, whatever the size)
    # would dominate one call per class (measured: 6 classes at 100 boxes took 2x longer that way).
    small = multi & (lengths <= SMALL_GROUP)
    if _numpy_first(int((lengths * (lengths - 1) // 2).sum())):
        small = multi  # torch not loaded and the input is small: every class in NumPy
    if small.any():
        sub_len = lengths[small]
        sub_starts = np.cumsum(sub_len) - sub_len
        rows = np.repeat(starts[small] - sub_starts, sub_len) + np.arange(int(sub_len.sum()))
        sub = np.take(nb, np.take(order, rows), axis=0)
        mask = _small_groups_nms(sub, sub_starts, sub_len, iou_threshold)
        kept_parts.append(order[rows[mask]])
    big = multi & ~small
    if big.any():
        import torch

        b, s = _as_tensors(nb, sc)
        sorted_b, sorted_s = b[torch.from_numpy(order)], s[torch.from_numpy(order)]
        for a, k in zip(starts[big].tolist(), lengths[big].tolist(), strict=True):
            kept = _greedy(sorted_b[a : a + k], sorted_s[a : a + k], iou_threshold, GROUP_DIRECT)
            kept_parts.append(order[kept.numpy() + a])
    keep = np.concatenate(kept_parts)
    return keep[np.lexsort((keep, -sc[keep]))]


def soft_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017): decay overlapping scores instead of removing boxes.

    method: "gaussian" (score *= exp(-iou^2 / sigma)) or "linear" (score *= 1 - iou when iou > threshold).
    Returns (kept indices in selection order, their decayed scores).
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft_nms method must be 'gaussian' or 'linear', got {method!r}")
    boxes = np.asarray(boxes, np.float32)
    s = np.asarray(scores, np.float32).copy()
    n = boxes.shape[0]
    idx = np.arange(n)
    keep: list[int] = []
    kept_scores: list[float] = []
    alive = s >= score_threshold
    while alive.any():
        cand = np.flatnonzero(alive)
        best = cand[np.argmax(s[cand])]
        keep.append(int(idx[best]))
        kept_scores.append(float(s[best]))
        alive[best] = False
        rest = np.flatnonzero(alive)
        if rest.size == 0:
            break
        iou = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
        if method == "gaussian":
            s[rest] *= np.exp(-(iou * iou) / sigma)
        else:
            s[rest] = np.where(iou > iou_threshold, s[rest] * (1.0 - iou), s[rest])
        alive[rest] = s[rest] >= score_threshold
    return np.asarray(keep, np.int64), np.asarray(kept_scores, np.float32)
