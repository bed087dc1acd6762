"""dlib's shape predictor (``shape_predictor_68_face_landmarks.dat``: an ensemble of regression trees,
Kazemi & Sullivan 2014) read straight from its file and evaluated with NumPy.

dlib itself is only a test/benchmark reference here (``dlib-bin`` is a dev dependency), so the runtime reads
the file with the serialization primitives of :mod:`pipeline.models.dlib_resnet` (``_Reader``).

File layout (dlib/image_processing/shape_predictor.h, ``serialize(shape_predictor)``)::

    int version (1)
    matrix<float,0,1> initial_shape          -- -nr, -nc, then nr*nc floats; x0 y0 x1 y1 ... in [0, 1] box units
    vector<vector<regression_tree>> forests   -- per cascade level, its trees
        regression_tree = vector<split_feature> splits, vector<matrix<float,0,1>> leaf_values
        split_feature   = unsigned long idx1, unsigned long idx2, float thresh
    vector<vector<unsigned long>> anchor_idx  -- per level, the landmark each feature pixel hangs off
    vector<vector<vector<float,2>>> deltas    -- per level, that pixel's offset from its landmark

Evaluation (``shape_predictor::operator()``): start from ``initial_shape``; at each cascade level compute the
similarity transform from ``initial_shape`` to the current shape (its 2x2 part only), place each feature
pixel at ``current[anchor] + R * delta``, map it through the box transform (unit square -> the face box,
corners inclusive), round to the nearest pixel and read the grey value (0 outside the image); then every tree
walks its complete binary tree (``pixel[idx1] - pixel[idx2] > thresh`` goes left) and adds its leaf's vector
to the shape. The trees of one level are evaluated together, one tree level at a time.

Parsing the 100 MB file token by token takes tens of seconds in Python, so the parsed arrays are cached once
as an ``.npz`` beside the model file (keyed by the source file's size and mtime).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.models.align import similarity_lstsq
from pipeline.models.dlib_resnet import DlibModelError, _Reader

log = logging.getLogger(__name__)
_DEFAULT: ShapePredictor | None = None
_DEFAULT_LOCK = threading.Lock()

# 68-point indices (iBUG 300-W markup) of the eyes, in the order the eye aspect ratio uses them.
RIGHT_EYE = (36, 37, 38, 39, 40, 41)  # the subject's right eye (left in the image)
LEFT_EYE = (42, 43, 44, 45, 46, 47)


@dataclass(frozen=True)
class ShapeModel:
    """Parsed arrays. L cascade levels, T trees per level, S splits and S+1 leaves per tree, P points,
    F feature pixels per level."""

    initial: np.ndarray  # (2P,) float32
    split_idx: np.ndarray  # (L, T, S, 2) int32
    split_thresh: np.ndarray  # (L, T, S) float32
    leaves: np.ndarray  # (L, T, S+1, 2P) float32
    anchor: np.ndarray  # (L, F) int32
    deltas: np.ndarray  # (L, F, 2) float32

    @property
    def num_parts(self) -> int:
        return int(self.initial.shape[0] // 2)


def _matrix(r: _Reader, expect_cols: int = 1) -> np.ndarray:
    nr, nc = -r.int(), -r.int()
    if nr < 0 or nc != expect_cols:
        raise r.fail(f"bad matrix shape ({nr}, {nc}), expected a column vector")
    return np.array([r.float() for _ in range(nr * nc)], np.float32)


def _count(r: _Reader, what: str, limit: int) -> int:
    n = r.int()
    if not 0 <= n <= limit:
        raise r.fail(f"bad {what} count {n}")
    return n


def parse_shape_predictor(data: bytes, source: str) -> ShapeModel:
    r = _Reader(data, source)
    version = r.int()
    if version != 1:
        raise r.fail(f"shape_predictor version {version}, expected 1")
    initial = _matrix(r)
    n_levels = _count(r, "cascade level", 100)
    idx_l, thr_l, leaf_l = [], [], []
    for _ in range(n_levels):
        n_trees = _count(r, "tree", 10_000)
        idx_t, thr_t, leaf_t = [], [], []
        for _ in range(n_trees):
            n_splits = _count(r, "split", 1 << 16)
            idx, thr = [], []
            for _ in range(n_splits):
                idx.append((r.int(), r.int()))
                thr.append(r.float())
            n_leaves = _count(r, "leaf", 1 << 17)
            if n_leaves != n_splits + 1:
                raise r.fail(f"tree with {n_splits} splits has {n_leaves} leaves")
            leaves = [_matrix(r) for _ in range(n_leaves)]
            idx_t.append(idx)
            thr_t.append(thr)
            leaf_t.append(leaves)
        idx_l.append(idx_t)
        thr_l.append(thr_t)
        leaf_l.append(leaf_t)
    n_anchor = _count(r, "anchor level", 100)
    anchor = [[r.int() for _ in range(_count(r, "anchor", 1 << 16))] for _ in range(n_anchor)]
    n_delta = _count(r, "delta level", 100)
    deltas = [[(r.float(), r.float()) for _ in range(_count(r, "delta", 1 << 16))] for _ in range(n_delta)]
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected bytes after the model")
    try:
        model = ShapeModel(
            initial=initial,
            split_idx=np.asarray(idx_l, np.int32),
            split_thresh=np.asarray(thr_l, np.float32),
            leaves=np.asarray(leaf_l, np.float32),
            anchor=np.asarray(anchor, np.int32),
            deltas=np.asarray(deltas, np.float32),
        )
    except ValueError as exc:  # ragged: trees of different depth, levels of different size
        raise DlibModelError(f"{source}: irregular shape predictor ({exc})") from None
    _check(model, source)
    return model


def _check(m: ShapeModel, source: str) -> None:
    n_levels, n_trees, n_splits = m.split_thresh.shape
    p2 = m.initial.shape[0]
    problems = []
    if p2 == 0 or p2 % 2:
        problems.append(f"initial shape has {p2} values")
    if n_splits & (n_splits + 1):
        problems.append(f"{n_splits} splits per tree is not a complete binary tree")
    if m.leaves.shape != (n_levels, n_trees, n_splits + 1, p2):
        problems.append(f"leaf array {m.leaves.shape} does not match")
    if m.anchor.shape[0] != n_levels or m.deltas.shape[:2] != m.anchor.shape:
        problems.append("anchor/delta arrays do not match the cascade")
    elif m.split_idx.size and (m.split_idx.min() < 0 or m.split_idx.max() >= m.anchor.shape[1]):
        problems.append("a split reads a feature pixel that does not exist")
    if m.anchor.size and (m.anchor.min() < 0 or m.anchor.max() >= p2 // 2):
        problems.append("a feature pixel hangs off a landmark that does not exist")
    if problems:
        raise DlibModelError(f"{source}: " + "; ".join(problems))


def load_shape_model(path: str | Path) -> ShapeModel:
    """Parse the dlib file, through an ``.npz`` cache beside it (rebuilt when the file changes)."""
    path = Path(path)
    st = path.stat()
    cache = path.with_name(path.name + f".{st.st_size}-{int(st.st_mtime)}.npz")
    if cache.is_file():
        try:
            with np.load(cache) as z:
                model = ShapeModel(**{k: z[k] for k in ShapeModel.__dataclass_fields__})
            _check(model, str(cache))
            return model
        except (OSError, ValueError, KeyError):
            log.warning("shape model cache %s unreadable; parsing %s again", cache, path)
    log.info("parsing %s (once; cached as %s)", path, cache.name)
    model = parse_shape_predictor(path.read_bytes(), str(path))
    tmp = cache.with_name(cache.name + ".part.npz")
    try:
        np.savez(tmp, **{k: getattr(model, k) for k in ShapeModel.__dataclass_fields__})
        tmp.replace(cache)
    except OSError:
        log.warning("cannot write shape model cache %s", cache, exc_info=True)
    return model


class ShapePredictor:
    """68 (or any number of) landmarks of a face inside a box, like ``dlib.shape_predictor``."""

    def __init__(self, model: ShapeModel) -> None:
        self.m = model
        n_splits = model.split_thresh.shape[2]
        self._depth = int(np.log2(n_splits + 1))

    @classmethod
    def from_file(cls, path: str | Path) -> ShapePredictor:
        return cls(load_shape_model(path))

    @classmethod
    def default(cls) -> ShapePredictor:
        """The 68-point model from the model store, one per process (65 MB of leaves; read-only, so cameras
        share it across threads)."""
        global _DEFAULT
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                from engines.model_store import get_model_path

                _DEFAULT = cls.from_file(get_model_path("dlib-landmarks68", "landmarks68"))
            return _DEFAULT

    def __call__(self, grey: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``grey``: HxW uint8; ``box``: left, top, right, bottom (inclusive corners, as dlib's rectangle).
        Returns (P, 2) float32 landmark positions in image pixels."""
        if grey.ndim != 2:
            raise ValueError(f"shape predictor needs a 2-D grey image, got shape {grey.shape}")
        m = self.m
        h, w = grey.shape
        left, top, right, bottom = (float(v) for v in box)
        sx, sy = right - left, bottom - top
        shape = m.initial.astype(np.float32).copy()
        init_pts = m.initial.reshape(-1, 2).astype(np.float64)
        n_trees = m.split_thresh.shape[1]
        trees = np.arange(n_trees)
        for level in range(m.split_thresh.shape[0]):
            cur = shape.reshape(-1, 2)
            rot = similarity_lstsq(init_pts, cur.astype(np.float64))[:, :2].astype(np.float32)
            pts = (m.deltas[level] @ rot.T + cur[m.anchor[level]]).astype(np.float64)  # float32, then double
            px = np.floor(left + pts[:, 0] * sx + 0.5).astype(np.int64)
            py = np.floor(top + pts[:, 1] * sy + 0.5).astype(np.int64)
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            values = np.zeros(len(pts), np.float32)
            values[inside] = grey[py[inside], px[inside]]
            node = np.zeros(n_trees, np.int64)
            idx, thr = m.split_idx[level], m.split_thresh[level]
            for _ in range(self._depth):
                f = idx[trees, node]
                go_left = (values[f[:, 0]] - values[f[:, 1]]) > thr[trees, node]
                node = np.where(go_left, 2 * node + 1, 2 * node + 2)
            leaf = node - thr.shape[1]
            # one tree after the other in float32, as dlib adds them (a pairwise sum rounds differently)
            steps = np.concatenate([shape[None], m.leaves[level][trees, leaf]])
            shape = np.cumsum(steps, axis=0, dtype=np.float32)[-1]
        out = shape.reshape(-1, 2).astype(np.float64)
        out[:, 0] = left + out[:, 0] * sx
        out[:, 1] = top + out[:, 1] * sy
        return out.astype(np.float32)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Soukupova & Cech 2016: (|p2-p6| + |p3-p5|) / (2 |p1-p4|), averaged over both eyes. Drops towards 0
    when the eyes close."""
    ears = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = points[list(eye)].astype(np.float64)
        width = np.linalg.norm(p[0] - p[3])
        if width <= 1e-6:
            return 0.0
        ears.append((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width))
    return float(np.mean(ears))
