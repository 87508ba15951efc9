// A Live session's history, kept in this one place: from Start to the next Start, every analysed frame.
//
// Two modes, chosen when the session starts:
// - per person (the default): one row per face per analysed frame, {time, frame, id, box, label, probabilities},
//   with the tracker's id and smoothed probabilities; plus the class counts of every frame;
// - aggregate only: the class counts of every frame and nothing else. No row, id or box is ever stored, so
//   none can be exported.
// Every frame and row names the model that classified it: the model may be switched during a session
// (settings.models lists each with the time it took over; settings.model is the one in use now).
// Times are seconds since the session started, to the millisecond. The page shows the session as
// window.ferkitState.session; its exports (CSV and JSON) are made from these fields and nothing else.

export class Session {
  // classNames: the model's labels, in its order. settings: what the export names besides the rows (model,
  // source, tracking, ...). startedAt: the session's zero, in performance.now()'s milliseconds.
  constructor({ classNames, aggregateOnly = false, binSeconds = 10, settings = {}, startedAt = performance.now() }) {
    this.settings = { ...settings, classNames: [...classNames], aggregateOnly, binSeconds,
                      started: new Date().toISOString(), models: [{ model: settings.model ?? null, from: 0 }] };
    this.rows = [];    // per person: [{time, frame, id, box: [x, y, w, h], label, probabilities: {class: p}}]
    this.frames = [];  // every analysed frame: [{time, faces, counts: {class: faces with that label}}]
    this.startedAt = startedAt;
    this.byId = new Map();  // id -> that person's rows (the same objects as in `rows`); empty in aggregate mode
  }

  get aggregateOnly() { return this.settings.aggregateOnly; }

  // The model classifying from `now` on (same class names: the caller starts a new session otherwise).
  switchModel(model, now = performance.now()) {
    if (model === this.settings.model) return;
    this.settings.model = model;
    this.settings.models.push({ model, from: Math.round(now - this.startedAt) / 1000 });
  }

  // One analysed frame at `now` (performance.now() ms): faces [{id, box, label, probabilities}] as tracked.
  record(now, faces) {
    const time = Math.round(now - this.startedAt) / 1000, frame = this.frames.length, model = this.settings.model;
    const counts = Object.fromEntries(this.settings.classNames.map((name) => [name, 0]));
    for (const face of faces) counts[face.label] = (counts[face.label] || 0) + 1;
    this.frames.push({ time, model, faces: faces.length, counts });
    if (this.aggregateOnly) return;
    for (const { id, box, label, probabilities } of faces) {
      const row = { time, frame, model, id, box: [...box], label, probabilities: { ...probabilities } };
      this.rows.push(row);
      if (!this.byId.has(id)) this.byId.set(id, []);
      this.byId.get(id).push(row);
    }
  }

  // The people seen, in order of first appearance: [{id, rows, first, last}] (none in aggregate mode).
  people() {
    return [...this.byId].map(([id, rows]) => ({ id, rows, first: rows[0].time, last: rows[rows.length - 1].time }));
  }

  // The class's emotion shares over time: per bin of `binSeconds` from the start, the analysed frames, the faces
  // counted in them and the share of those faces with each label (0 everywhere in a bin without faces).
  bins() {
    const { binSeconds, classNames } = this.settings, bins = [];
    for (const { time, faces, counts } of this.frames) {
      const k = Math.floor(time / binSeconds);
      while (bins.length <= k) {
        const start = bins.length * binSeconds;
        bins.push({ start, end: start + binSeconds, frames: 0, faces: 0,
                    counts: Object.fromEntries(classNames.map((name) => [name, 0])) });
      }
      bins[k].frames += 1;
      bins[k].faces += faces;
      for (const [name, n] of Object.entries(counts)) bins[k].counts[name] = (bins[k].counts[name] || 0) + n;
    }
    for (const bin of bins) {
      bin.shares = Object.fromEntries(Object.entries(bin.counts).map(([name, n]) => [name, bin.faces ? n / bin.faces : 0]));
    }
    return bins;
  }

  // The JSON export: the settings, the rows (per-person mode only), every frame's counts and the bins.
  toJSON() {
    const { settings, rows, frames } = this;
    return this.aggregateOnly ? { settings, frames, bins: this.bins() } : { settings, rows, frames, bins: this.bins() };
  }

  // The CSV export. Per person: one line per row, `time,frame,model,id,x,y,width,height,label,<class...>` (the
  // classes' probabilities). Aggregate only: one line per analysed frame, `time,frame,model,faces,<class...>` (the
  // faces with each label). Numbers as JavaScript writes them (they read back to the same values).
  toCSV() {
    const names = this.settings.classNames;
    const lines = this.aggregateOnly
      ? [["time", "frame", "model", "faces", ...names],
         ...this.frames.map(({ time, model, faces, counts }, frame) =>
           [time, frame, model, faces, ...names.map((n) => counts[n])])]
      : [["time", "frame", "model", "id", "x", "y", "width", "height", "label", ...names],
         ...this.rows.map(({ time, frame, model, id, box, label, probabilities }) =>
           [time, frame, model, id, ...box, label, ...names.map((n) => probabilities[n])])];
    return lines.map((cells) => cells.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }
}

// A CSV cell (RFC 4180): quoted where it holds a comma, a quote or a line break (class names come from model files).
function csvCell(value) {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
