"""Detection profiles: named ``cameras[].detect`` settings, one line per camera (``profile: street``).

A profile is a starting point, not a lock: keys the camera sets under ``detect`` are applied on top of it
(``profile: street`` plus ``detect: {tiling: {overlap: 0.2}}``). The choices and their measured recall and
cost are in BENCHMARKS.md ("Profiles", issue 19) and docs/regions.md; the measurement is
``benchmarks/eval_profiles.py``. Sizes are frame pixels.
"""

from __future__ import annotations

from typing import Any, Literal

ProfileName = Literal["whole", "street", "street-rotate", "street-far", "door"]

PROFILES: dict[str, dict[str, Any]] = {
    # the whole frame, downscaled to the detector input: the cheapest; people under ~100 px tall in a 1080p
    # frame are mostly missed
    "whole": {},
    # chosen on MOT17-04 under a cost cap of 3 whole-frame passes: two 1080 px square tiles (a 1080p frame's
    # full height, 10 % overlap), no extra whole-frame pass. 1.8x the pixels per person of the whole frame
    # at 2 detector inputs; a frame no larger than a tile is run whole
    "street": {"tiling": {"enabled": True, "size": 1080, "overlap": 0.1, "full_frame": False}},
    # street's two tiles, one per detected frame in turn (issue 24): the cost of one whole-frame pass; a
    # person in the tile not run this frame is carried (their last box) until it runs again. For fixed
    # cameras: on a moving camera a carried box goes stale within a few frames
    "street-rotate": {
        "tiling": {"enabled": True, "size": 1080, "overlap": 0.1, "full_frame": False, "tiles_per_frame": 1}
    },
    # recall first, for far, small people: 640 px tiles + the whole frame (9 detector inputs on 1080p)
    "street-far": {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": True}},
    # a door or entrance camera: people and faces near the lens are large, so the whole frame every
    # detected frame (tiles would cut them; motion gating would risk a late first detection)
    "door": {"tiling": {"enabled": False}, "regions": {"enabled": False}},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` applied key by key (nested dicts merged, other values replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_detect(name: str, detect: dict[str, Any] | None) -> dict[str, Any]:
    """The ``cameras[].detect`` mapping of profile ``name`` with the camera's own ``detect`` keys on top."""
    return deep_merge(PROFILES[name], detect or {})
