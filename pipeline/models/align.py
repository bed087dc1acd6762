"""5-point face alignment to the 150x150 chip dlib's face-recognition ResNet was trained on.

dlib makes its chips (``get_face_chip_details(shape, size=150, padding=0.25)`` + ``extract_image_chip``) by
fitting a least-squares similarity transform from a fixed 5-point template (unit square, padded) to the
5 points of its shape predictor (outer/inner corner of each eye, base of the nose). The chip then covers
the template's padded square: its corners map to the chip's corner *pixels*, so the chip grid is
``(size * scale - 1) / (size - 1)`` image pixels per step about the template centre; each chip pixel is
a bilinear sample of the image, truncated to uint8, black where the 2x2 neighbourhood leaves the image.

MTCNN's 5 points are different (eye centres, nose tip, mouth corners), so they get their own template,
expressed in the same padded unit square: ``MTCNN_TEMPLATE`` is the mean position of MTCNN's points in
dlib's template frame, over the faces of ``shared/data/faces/celeb5`` (both detectors run on the same
photos; see ``fit_template`` and benchmarks/bench_face_embedding.py, which re-fits it on the train photos
and reports chip error and embedding distance on the val photos). Aligning MTCNN points to that template
(eyes weighted most) then approximates dlib's chip framing; it cannot be exact, because the two detectors
put their points on different features with different errors.

Faces much larger than the chip are first reduced with dlib's [1 4 6 4 1] Gaussian pyramid (same crop, level
choice and point mapping) so the chip is not aliased and still matches dlib's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25

#: dlib's 5-point template (dlib/image_transforms/interpolation.h, get_face_chip_details), unit square,
#: order of dlib's 5-point predictor: image-right eye outer, inner; image-left eye outer, inner; nose base.
DLIB5_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

#: MTCNN's points (image-left eye, image-right eye, nose tip, image-left / image-right mouth corner) in the
#: same unit-square frame: mean over the 111 celeb5 faces both detectors found, mirror-symmetrised.
MTCNN_TEMPLATE = np.array(
    [
        [0.2315, 0.2046],
        [0.7685, 0.2046],
        [0.5000, 0.5321],
        [0.2575, 0.7834],
        [0.7425, 0.7834],
    ]
)

#: Per-point weights of the similarity fit. MTCNN's mouth corners move with expression and dlib's framing
#: ignores the mouth, so the eyes dominate: on held-out celeb5 faces these weights cut the mean embedding
#: distance to dlib's own chip from 0.17 (equal weights) to 0.13.
MTCNN_WEIGHTS = np.array([3.0, 3.0, 1.0, 0.125, 0.125])

TEMPLATES = {"mtcnn": MTCNN_TEMPLATE, "dlib5": DLIB5_TEMPLATE}
TEMPLATE_WEIGHTS = {"mtcnn": MTCNN_WEIGHTS, "dlib5": np.ones(5)}


class AlignmentError(ValueError):
    """Landmarks that cannot define a chip (wrong shape, not finite, degenerate)."""


def similarity_lstsq(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation; no reflection): src -> dst.

    Returns a (2, 3) matrix ``M`` with ``dst ~= M @ [x, y, 1]``. Umeyama's closed form.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(src),) or (w < 0).any() or w.sum() <= 0:
        raise AlignmentError(f"weights must be {len(src)} non-negative numbers, got {w}")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    var_s = float(w @ (s**2).sum(1))
    if var_s <= 1e-12:
        raise AlignmentError("landmarks are degenerate (all points coincide)")
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def _template_px(template: str | np.ndarray, size: int, padding: float) -> np.ndarray:
    t = TEMPLATES[template] if isinstance(template, str) else np.asarray(template, np.float64)
    return (t + padding) / (1 + 2 * padding) * size


def _check_landmarks(landmarks: np.ndarray, n_points: int) -> np.ndarray:
    pts = np.asarray(landmarks, np.float64)
    if pts.shape != (n_points, 2):
        raise AlignmentError(f"landmarks must have shape ({n_points}, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise AlignmentError("landmarks contain NaN or inf")
    return pts


def chip_to_image(
    landmarks: np.ndarray,
    template: str | np.ndarray = "mtcnn",
    size: int = CHIP_SIZE,
    padding: float = CHIP_PADDING,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """(2, 3) affine taking chip pixel (col, row) to image (x, y), framed the way dlib frames its chips.

    ``template``: "mtcnn", "dlib5" or a (5, 2) array in the unit-square frame; ``weights`` default to the
    named template's (equal for an array).
    """
    tpl = _template_px(template, size, padding)
    pts = _check_landmarks(landmarks, len(tpl))
    if weights is None and isinstance(template, str):
        weights = TEMPLATE_WEIGHTS[template]
    fit = similarity_lstsq(tpl, pts, weights)  # template pixels -> image
    scale = float(np.hypot(fit[0, 0], fit[1, 0]))
    if not scale > 1e-6:
        raise AlignmentError("landmarks give a zero-size face")
    rot = fit[:, :2] / scale
    centre = fit @ np.array([size / 2.0, size / 2.0, 1.0])
    step = (size * scale - 1.0) / (size - 1.0)  # image pixels per chip pixel
    m = np.empty((2, 3))
    m[:, :2] = rot * step
    m[:, 2] = centre - m[:, :2] @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.hstack([a, -a @ m[:, 2:3]])


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def extract_chip(image: np.ndarray, chip_to_img: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Sample a (size, size, C) uint8 chip from ``image`` (H, W, C uint8) through ``chip_to_img``.

    Like dlib's ``extract_image_chip``: crop the chip's bounding box (plus a border for the filter), halve it
    with a Gaussian pyramid while a chip step would still exceed 1 source pixel after halving, then sample.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise AlignmentError(f"image must be (H, W, C) uint8, got {image.shape} {image.dtype}")
    m = np.asarray(chip_to_img, np.float64).copy()
    span = float(np.sqrt(abs(np.linalg.det(m[:, :2])))) * (size - 1)  # chip side in image pixels
    levels, border = 0, 2.0
    while (span / 2 ** (levels + 1) + 1) ** 2 > size * size:
        levels += 1
        border = 2 * border + 2
    corners = transform_points(m, np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]]))
    h, w = image.shape[:2]
    x0 = int(np.floor(max(corners[:, 0].min() - border, 0.0) + 0.5))
    y0 = int(np.floor(max(corners[:, 1].min() - border, 0.0) + 0.5))
    x1 = int(np.floor(min(corners[:, 0].max() + border, w - 1.0) + 0.5))
    y1 = int(np.floor(min(corners[:, 1].max() + border, h - 1.0) + 0.5))
    chip = np.zeros((size, size, image.shape[2]), np.uint8)
    if x0 > x1 or y0 > y1:
        return chip
    src = image[y0 : y1 + 1, x0 : x1 + 1]
    m[:, 2] -= (x0, y0)
    for _ in range(levels):
        src = pyramid_down(src)
        m /= 2.0
        m[:, 2] += _PYRAMID_SHIFT
    if src.shape[0] < 2 or src.shape[1] < 2:
        return chip
    return _bilinear(src, m, size, chip)


#: Where a point lands after one pyramid_down level: p / 2 + shift (dlib's pyramid_down<2>::point_down).
_PYRAMID_SHIFT = np.array([-1.25, -0.75])


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """Halve an (H, W, C) uint8 image: separable [1 4 6 4 1] / 16 filter, valid part only, every 2nd sample.

    Integer arithmetic with a truncating divide, as dlib's pyramid_down<2>; output is
    ((H - 3) // 2, (W - 3) // 2) (empty for inputs of 8 pixels or less on a side).
    """
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, image.shape[2]), np.uint8)
    v = image.astype(np.uint32)
    nc, nr = (w - 3) // 2, (h - 3) // 2
    r = v[:, 0 : 2 * nc : 2] + 4 * v[:, 1 : 2 * nc + 1 : 2] + 6 * v[:, 2 : 2 * nc + 2 : 2]
    r += 4 * v[:, 3 : 2 * nc + 3 : 2] + v[:, 4 : 2 * nc + 4 : 2]
    o = r[0 : 2 * nr : 2] + 4 * r[1 : 2 * nr + 1 : 2] + 6 * r[2 : 2 * nr + 2 : 2]
    o += 4 * r[3 : 2 * nr + 3 : 2] + r[4 : 2 * nr + 4 : 2]
    return (o // 256).astype(np.uint8)


def _bilinear(src: np.ndarray, m: np.ndarray, size: int, out: np.ndarray) -> np.ndarray:
    """Bilinear samples at m @ (col, row, 1), truncated to uint8; 0 where the 2x2 neighbourhood leaves src."""
    sh, sw, ch = src.shape
    g = np.arange(size, dtype=np.float64)
    px = (m[0, 0] * g[None, :] + m[0, 1] * g[:, None] + m[0, 2]).ravel()
    py = (m[1, 0] * g[None, :] + m[1, 1] * g[:, None] + m[1, 2]).ravel()
    left = np.floor(px)
    top = np.floor(py)
    valid = (left >= 0) & (top >= 0) & (left < sw - 1) & (top < sh - 1)
    fx = (px - left).astype(np.float32)
    fy = (py - top).astype(np.float32)
    idx = np.where(valid, top * sw + left, 0).astype(np.intp)
    planes = src.transpose(2, 0, 1).reshape(ch, -1).astype(np.float32)  # planar: fast gathers and lerps
    tl, tr = np.take(planes, idx, axis=1), np.take(planes, idx + 1, axis=1)
    bl, br = np.take(planes, idx + sw, axis=1), np.take(planes, idx + sw + 1, axis=1)
    top_row = tl + fx * (tr - tl)
    val = top_row + fy * (bl + fx * (br - bl) - top_row)
    val *= valid
    np.clip(val, 0, 255, out=val)
    out[:] = val.astype(np.uint8).T.reshape(size, size, ch)  # astype truncates, as dlib's cast does
    return out


def align_faces(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: str | np.ndarray = "mtcnn",
    size: int = CHIP_SIZE,
    padding: float = CHIP_PADDING,
    bgr_to_rgb: bool = False,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Chips (N, size, size, 3) uint8 for the faces whose 5 points are ``landmarks`` (N, 5, 2).

    ``bgr_to_rgb`` flips the channels of the chips (cheaper than converting the whole frame).
    """
    lm = np.asarray(landmarks)
    if lm.ndim != 3 or lm.shape[1:] != (5, 2):
        raise AlignmentError(f"landmarks must have shape (N, 5, 2), got {lm.shape}")
    chips = np.empty((len(lm), size, size, 3), np.uint8)
    for i, pts in enumerate(lm):
        try:
            chips[i] = extract_chip(image, chip_to_image(pts, template, size, padding, weights), size)
        except AlignmentError as exc:
            raise AlignmentError(f"face {i} of {len(lm)}: {exc}") from None
    if bgr_to_rgb:
        chips = chips[..., ::-1]
    return np.ascontiguousarray(chips)


def fit_template(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    size: int = CHIP_SIZE,
    padding: float = CHIP_PADDING,
    symmetric: bool = True,
) -> np.ndarray:
    """Mean position of some landmark scheme in dlib's unit-square template frame.

    ``pairs``: (dlib 5-point landmarks, other landmarks) of the same faces. Each face's other landmarks are
    mapped through the inverse of dlib's template fit for that face, then averaged. ``symmetric`` averages
    the result with its mirror image (needs the MTCNN point order: left/right pairs 0-1 and 3-4).
    """
    mapped = []
    for dlib_pts, other in pairs:
        fit = similarity_lstsq(_template_px("dlib5", size, padding), _check_landmarks(dlib_pts, 5))
        mapped.append(transform_points(invert_affine(fit), np.asarray(other, np.float64)))
    if not mapped:
        raise AlignmentError("fit_template needs at least one face")
    unit = np.mean(mapped, axis=0) / size * (1 + 2 * padding) - padding
    if symmetric:
        unit = (unit + unit[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]) / 2
    return unit
