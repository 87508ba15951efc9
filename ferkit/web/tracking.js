// Faces followed across video frames, exactly as ferkit.prediction's video tracker follows them:
// every (track, face) pair is ranked by box overlap and matched greedily from the largest overlap down
// (pairs under minIou never match); a face left over starts a new track; a track missing for more than
// maxMissed analysed frames ends; each track's probabilities are an exponential moving average with weight
// `smoothing` on the past. The parameters come from Python through models/index.json ("tracking").
import { iou } from "./geometry.js";

export class Tracker {
  constructor({ min_iou, max_missed, smoothing }) {
    Object.assign(this, { minIou: min_iou, maxMissed: max_missed, smoothing });
    this.tracks = new Map();  // id -> {box, probabilities: {class: p}, missed}
    this.nextId = 0;
  }

  // Another model classifies from the next frame on: each track's next probabilities replace its average instead
  // of joining it (ids, boxes and missed counts stay), so no frame of the new model mixes in the old one's answers.
  restartSmoothing() {
    for (const track of this.tracks.values()) track.restart = true;
  }

  // faces: [{box, probabilities}] of one frame -> [{id, probabilities (smoothed)}], in the faces' order.
  update(faces) {
    const pairs = [];
    for (const [id, track] of this.tracks) faces.forEach((face, i) => pairs.push([iou(track.box, face.box), id, i]));
    // Python sorts the (overlap, id, index) tuples in reverse: ties go to the larger id, then the larger index.
    pairs.sort((a, b) => b[0] - a[0] || b[1] - a[1] || b[2] - a[2]);
    const assigned = new Map(), used = new Set();
    for (const [overlap, id, i] of pairs) {
      if (overlap >= this.minIou && !assigned.has(i) && !used.has(id)) { assigned.set(i, id); used.add(id); }
    }
    const results = faces.map((face, i) => {
      let id = assigned.get(i), track;
      if (id === undefined) {
        id = this.nextId++;
        track = { probabilities: { ...face.probabilities } };
        this.tracks.set(id, track);
      } else {
        track = this.tracks.get(id);
        // After restartSmoothing the new answer stands alone; otherwise it joins the track's average.
        const past = track.restart ? 0 : this.smoothing;
        for (const name of Object.keys(face.probabilities)) {
          track.probabilities[name] = past * track.probabilities[name] + (1 - past) * face.probabilities[name];
        }
        track.restart = false;
      }
      track.box = face.box;
      track.missed = 0;
      return { id, probabilities: { ...track.probabilities } };
    });
    const current = new Set(results.map((r) => r.id));
    for (const [id, track] of this.tracks) {
      if (!current.has(id) && ++track.missed > this.maxMissed) this.tracks.delete(id);
    }
    return results;
  }
}
