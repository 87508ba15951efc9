"""Following faces across video frames: one id per person, probabilities smoothed over time.

Used by :meth:`ferkit.prediction.Predictor.predict_video` and by ``ferkit analyse``'s chunks
(:mod:`ferkit.recordings`); ``ferkit/web/tracking.js`` is the same rule in the page. The parameters are
:data:`ferkit.settings.TRACKING`.
"""

from __future__ import annotations

import math

import numpy as np

from ferkit.faces import box_iou
from ferkit.settings import TRACKING


class Tracker:
    """Greedy IoU matching of detections to tracks, with per-track probability smoothing.

    Each detection joins the track whose last box overlaps it most (at least ``min_iou``), pairs taken best
    first; the others start new tracks, numbered from 0 in the order they appear. A track's probabilities are
    an exponential moving average (weight ``smoothing`` on the past). A track missed on more than
    ``max_missed`` analysed frames ends.
    """

    def __init__(self, smoothing: float = TRACKING.smoothing, min_iou: float = TRACKING.min_iou,
                 max_missed: int = TRACKING.max_missed):
        self.smoothing, self.min_iou, self.max_missed = smoothing, min_iou, max_missed
        self.tracks: dict[int, dict] = {}
        self.next_id = 0

    def update(self, found, probabilities):
        """``found`` (faces with ``.box``) and their (N, classes) probabilities -> [(face, track id, smoothed
        float64 probabilities)], in the order of ``found``."""
        pairs = sorted(((box_iou(track["box"], face.box), track_id, i)
                        for track_id, track in self.tracks.items() for i, face in enumerate(found)), reverse=True)
        assigned, used = {}, set()
        for overlap, track_id, i in pairs:
            if overlap >= self.min_iou and i not in assigned and track_id not in used:
                assigned[i] = track_id
                used.add(track_id)
        results = []
        for i, face in enumerate(found):
            if i in assigned:
                track = self.tracks[assigned[i]]
                track["probabilities"] = (self.smoothing * track["probabilities"]
                                          + (1 - self.smoothing) * probabilities[i])
                track_id = assigned[i]
            else:
                track_id, self.next_id = self.next_id, self.next_id + 1
                track = self.tracks[track_id] = {"probabilities": probabilities[i].astype(np.float64)}
            track.update(box=face.box, missed=0)
            results.append((face, track_id, track["probabilities"]))
        for track_id in list(self.tracks):
            if track_id not in used and track_id not in [r[1] for r in results]:
                self.tracks[track_id]["missed"] += 1
                if self.tracks[track_id]["missed"] > self.max_missed:
                    del self.tracks[track_id]
        return results


def warm_up_frames(smoothing: float = TRACKING.smoothing, max_missed: int = TRACKING.max_missed,
                   tolerance: float = 1e-6) -> int:
    """Analysed frames a fresh tracker needs before its state equals, up to track ids, that of a tracker that
    ran from the start: every track it could still match was seen within the last ``max_missed`` + 1 frames,
    and a moving average started late differs by at most ``smoothing ** n`` (under ``tolerance``)."""
    settle = math.ceil(math.log(tolerance) / math.log(smoothing)) if 0 < smoothing < 1 else 1
    return max(max_missed + 1, settle)
