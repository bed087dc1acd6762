"""Detection at native resolution: motion-gated regions and tiling (``cameras[].detect``).

A 1080p frame squeezed into a 416x416 detector input leaves a distant person a few pixels tall. These
modules decide *which parts of a frame* the detector sees, at their own resolution:

- ``motion``: cheap motion detection on a small grey copy of the frame (running-average background,
  frame differencing, contour boxes), the way Frigate gates its detector;
- ``planner``: per camera, turns motion boxes and the objects already found into detector-sized square
  regions, or a full scan (the whole frame, or overlapping tiles plus the whole frame), or nothing at all
  when the scene is static;
- ``merge``: maps the boxes found in each crop back to the frame and removes the duplicates that crops
  overlapping each other (or cutting an object in two) produce.
"""
