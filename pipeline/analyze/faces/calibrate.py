"""Choose the matcher's threshold from evidence: genuine and impostor attempts scored with the decision rule.

Attempts (one probe embedding against a gallery, decided by :func:`pipeline.analyze.faces.matcher.decide`):

- **genuine**, leave-one-out: each template of a person with two or more templates, against the gallery
  with that one template removed. Correct when the rule names that person.
- **impostor**, leave-one-identity-out (the default impostor set, available on any install with two or more
  people enrolled): each template of a person, against the gallery with that whole person removed. An open
  set: the probe's identity is not enrolled. A false accept when the rule names anyone.
- **impostor**, external: embeddings of photos of people who are not enrolled (``--impostors DIR``), against
  the whole gallery.

The threshold is the smaller of two (on a 0.005 grid):

- empirical: the largest whose per-attempt false accept rate on these attempts is within the target. With
  N impostor attempts and none accepted, the 95 % upper bound on the true rate is about 3/N, so a target of
  0.1 % needs 3000 attempts before "0 accepted" means it; with the few hundred a gallery gives, this
  threshold sits just under the closest impostor and lets the next, unseen one in;
- tail: the target quantile of a normal distribution fitted to the impostors' nearest distances (mean -
  z * sd). This extrapolates to rates the attempts cannot show; on the project's open-set evaluation
  (BENCHMARKS.md) it is what keeps held-apart impostors out.

and then a **safety margin** lower: the one-sided 95 % standard error of the impostors' mean nearest distance,
counted over impostor *identities* (each enrolled person left out is one, each external photo is one), not
attempts: ``1.645 * sd / sqrt(identities)`` (about 0.025 with 15-20 people enrolled, 0.01 with 100;
``faces calibrate --safety D`` sets it). Why: both estimates come from the gallery's own people, a few
enrollment-quality templates each, whose attempts are not independent, and a stranger meets one person more
than a left-out one did; so the estimate of where strangers lie is itself uncertain by about that much. On
the project's held-apart evaluation (BENCHMARKS.md, issue 18) the closest never-seen impostor came within
0.009 of the unmargined threshold; in the 20-person case of issue 18 one of 190 came 0.003 *under* it (FAR
1/190 at a 0.001 target). Bounds on the tail quantile itself (a normal tolerance bound, the jackknife over
identities) need 0.06-0.12 at these gallery sizes and refuse most genuine photos. Rejected as a shipped
impostor set: scikit-image's ``lfw_subset`` (100 LFW faces at 25 x 25 px): upscaled, they embed far from
everyone and *raised* the threshold above held-apart strangers.

The report says how many attempts there were, which of the two was used, and the margin.

The k-frame vote of a door: frames of one face are strongly correlated, so a vote's false accept rate lies
between FAR**k (independent frames) and FAR (identical frames); both are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.analyze.faces.matcher import decide, mean_distance

GRID = np.round(np.arange(0.30, 0.8001, 0.005), 3)
SAFETY_CONFIDENCE = 0.95  # of the safety margin below the gallery-derived threshold (module docstring)


@dataclass(frozen=True)
class Attempts:
    """Per attempt: mean distance to each gallery person (+inf where that person is left out), and who the
    probe really is (None for an external impostor)."""

    distances: np.ndarray  # (A, P)
    truth: list[str | None]
    genuine: np.ndarray  # (A,) bool: the probe's identity is in its gallery


def gallery_attempts(gallery: dict[str, np.ndarray]) -> Attempts:
    names = sorted(gallery)
    rows: list[list[float]] = []
    truth: list[str | None] = []
    genuine: list[bool] = []
    for p_idx, person in enumerate(names):
        temps = np.asarray(gallery[person], np.float32)
        for i, probe in enumerate(temps):
            others = [mean_distance(np.asarray(gallery[n], np.float32), probe) for n in names]
            if len(temps) > 1:  # genuine: this template out of its own person
                g = list(others)
                g[p_idx] = mean_distance(np.delete(temps, i, axis=0), probe)
                rows.append(g)
                truth.append(person)
                genuine.append(True)
            imp = list(others)  # impostor: the whole person out
            imp[p_idx] = float("inf")
            rows.append(imp)
            truth.append(person)
            genuine.append(False)
    return Attempts(np.asarray(rows, np.float64).reshape(-1, len(names)), truth, np.asarray(genuine, bool))


def external_attempts(gallery: dict[str, np.ndarray], probes: np.ndarray) -> Attempts:
    names = sorted(gallery)
    rows = [[mean_distance(np.asarray(gallery[n], np.float32), p) for n in names] for p in probes]
    return Attempts(
        np.asarray(rows, np.float64).reshape(-1, len(names)), [None] * len(rows), np.zeros(len(rows), bool)
    )


def merge(*parts: Attempts) -> Attempts:
    parts = tuple(p for p in parts if len(p.truth))
    if not parts:
        return Attempts(np.zeros((0, 0)), [], np.zeros(0, bool))
    return Attempts(
        np.concatenate([p.distances for p in parts]),
        [t for p in parts for t in p.truth],
        np.concatenate([p.genuine for p in parts]),
    )


@dataclass(frozen=True)
class Rates:
    threshold: float
    margin: float
    far: float  # impostor attempts accepted as anyone / impostor attempts
    frr: float  # genuine attempts not accepted as themselves / genuine attempts
    misid: float  # genuine attempts accepted as someone else / genuine attempts
    impostor_attempts: int
    genuine_attempts: int
    far_upper95: float


def upper95(errors: int, n: int) -> float:
    """One-sided 95 % upper confidence bound of a rate (Clopper-Pearson)."""
    if n == 0:
        return 1.0
    if errors >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, errors + 1, n - errors))


def rates(att: Attempts, names: list[str], threshold: float, margin: float) -> Rates:
    fa = fr = mis = 0
    n_gen = int(att.genuine.sum())
    n_imp = len(att.truth) - n_gen
    for row, truth, gen in zip(att.distances, att.truth, att.genuine, strict=True):
        m = decide(row, names, threshold, margin)
        if gen:
            if m.identity != truth:
                fr += 1
                mis += m.identity is not None
        elif m.identity is not None:
            fa += 1
    return Rates(
        threshold,
        margin,
        fa / n_imp if n_imp else float("nan"),
        fr / n_gen if n_gen else float("nan"),
        mis / n_gen if n_gen else float("nan"),
        n_imp,
        n_gen,
        upper95(fa, n_imp),
    )


def tail_threshold(att: Attempts, target_far: float) -> float:
    """The ``target_far`` quantile of a normal fitted to the impostor attempts' nearest distances."""
    from scipy.stats import norm

    nearest = att.distances[~att.genuine].min(axis=1)
    nearest = nearest[np.isfinite(nearest)]
    if len(nearest) < 2:
        return float("inf")
    return float(nearest.mean() + norm.ppf(target_far) * nearest.std(ddof=1))


def impostor_identities(att: Attempts) -> int:
    """Independent impostors: each enrolled person left out counts once, each external photo once."""
    truths = [t for t, g in zip(att.truth, att.genuine, strict=True) if not g]
    return len({t for t in truths if t is not None}) + sum(t is None for t in truths)


def safety_margin(att: Attempts, confidence: float = SAFETY_CONFIDENCE) -> float:
    """One-sided ``confidence`` standard error of the impostors' mean nearest distance, over identities."""
    from scipy.stats import norm

    nearest = att.distances[~att.genuine].min(axis=1)
    nearest = nearest[np.isfinite(nearest)]
    n = impostor_identities(att)
    if len(nearest) < 2 or n < 2:
        return float("inf")
    return float(norm.ppf(confidence) * nearest.std(ddof=1) / np.sqrt(n))


def choose_threshold(
    att: Attempts, names: list[str], margin: float, target_far: float, safety: float | None = None
) -> Rates:
    """The smaller of the empirical and the tail threshold, minus the safety margin (``None``: the
    standard-error one, see the module docstring), on the grid."""
    if int((~att.genuine).sum()) == 0:
        raise ValueError("no impostor attempts: enroll at least two people or pass impostor photos")
    if safety is None:
        safety = safety_margin(att)
    if safety < 0:
        raise ValueError(f"the safety margin must be >= 0, got {safety}")
    tail = tail_threshold(att, target_far)
    best: Rates | None = None
    for t in GRID:
        if t > tail:
            break
        r = rates(att, names, float(t), margin)
        if r.far <= target_far:
            best = r
        else:
            break
    chosen = None if best is None else [t for t in GRID if t <= best.threshold - safety + 1e-9]
    if best is None or not chosen:
        raise ValueError(
            f"no threshold >= {GRID[0]} keeps the false accept rate within {target_far} (normal-tail estimate "
            f"{tail:.3f}, safety margin {safety:.3f}): the gallery's people look alike to the model, or the "
            "impostor photos are of enrolled people"
        )
    return rates(att, names, float(chosen[-1]), margin)


def unmargined_threshold(att: Attempts, names: list[str], margin: float, target_far: float) -> float:
    """What the threshold would be without the safety margin (for the report)."""
    return choose_threshold(att, names, margin, target_far, safety=0.0).threshold


def report(
    r: Rates,
    k_frames: int,
    model_id: str,
    target_far: float,
    sources: dict[str, int],
    tail: float,
    safety: float | None = None,
    unmargined: float | None = None,
) -> dict:
    out = asdict(r)
    out.update(
        tail_threshold=tail,
        safety_margin=safety,
        threshold_without_safety=unmargined,
        model_id=model_id,
        target_far=target_far,
        impostor_sources=sources,
        vote_k=k_frames,
        vote_far_independent=r.far**k_frames,
        vote_far_correlated=r.far,
    )
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}
