// The Live view's session panel: a person picker and that person's emotion probabilities over the session, the
// class's emotion shares over time (stacked, one bar per bin), the aggregate-only switch and the CSV/JSON
// exports. It draws a Session (session.js) and keeps no history of its own.
//
// Colours come from index.json through `palette()` (drawing.js's ferkitColor); the elements are index.html's
// #session-*.

const $ = (id) => document.getElementById(id);
const AGGREGATE_KEY = "ferkit.aggregateOnly";  // the choice is remembered, so a session that starts by itself keeps it
const REDRAW_MS = 250;  // the charts follow the session a few times a second, not on every frame
const TEXT = "#444";    // chart text: 9.7:1 on the page's background

export class SessionPanel {
  // palette(): {colors, unknownColor}; download(blob, fileName) saves a file.
  constructor({ palette, download }) {
    Object.assign(this, { palette, download, session: null, selected: null, drawnAt: -Infinity, peopleKey: null });
    const aggregate = $("session-aggregate");
    aggregate.checked = localStorage.getItem(AGGREGATE_KEY) === "true";
    aggregate.onchange = () => localStorage.setItem(AGGREGATE_KEY, String(aggregate.checked));
    $("session-person").onchange = (event) => { this.selected = Number(event.target.value); this.refresh(true); };
    $("session-csv").onclick = () => this.export("csv");
    $("session-json").onclick = () => this.export("json");
    this.refresh(true);
  }

  // The mode the next session starts in (the checkbox; it cannot change while a session runs).
  get aggregateOnly() { return $("session-aggregate").checked; }

  // A session started (running) or stopped.
  running(isRunning) { $("session-aggregate").disabled = isRunning; this.refresh(true); }

  show(session) {
    Object.assign(this, { session, selected: null, peopleKey: null });  // null: the picker is rebuilt
    this.refresh(true);
  }

  // Redraws the panel, at most every REDRAW_MS unless `force`.
  refresh(force = false) {
    const now = performance.now();
    if (!force && now - this.drawnAt < REDRAW_MS) return;
    this.drawnAt = now;
    const session = this.session, aggregate = session ? session.aggregateOnly : this.aggregateOnly;
    $("session-note").hidden = !aggregate;
    $("session-csv").disabled = $("session-json").disabled = !session || !session.frames.length;
    this.fillPeople(aggregate);
    const palette = session ? this.palette() : {};  // none before a session: the models' index may not be loaded
    drawPersonTimeline($("session-timeline"), session, this.selected, palette);
    drawShares($("session-shares"), session, palette);
    const frames = session ? session.frames.length : 0;
    const span = frames ? session.frames[frames - 1].time : 0;
    $("session-readout").textContent = !session ? "" : `${frames} frame${frames === 1 ? "" : "s"} over ${span.toFixed(0)} s · `
      + (aggregate ? "class counts only" : `${session.byId.size} ${session.byId.size === 1 ? "person" : "people"}`);
  }

  // The person picker: rebuilt only when someone new appears (rebuilding closes an open list).
  fillPeople(aggregate) {
    const select = $("session-person");
    const people = this.session && !aggregate ? this.session.people() : [];
    select.disabled = !people.length;
    if (this.selected === null && people.length) this.selected = people[0].id;
    const key = people.map((person) => person.id).join(",");
    if (key === this.peopleKey) return;
    this.peopleKey = key;
    select.replaceChildren(...people.map(({ id, first }) => new Option(`#${id} (from ${first.toFixed(0)} s)`, id)));
    if (people.length) select.value = String(this.selected);
  }

  export(format) {
    const session = this.session;
    const stamp = session.settings.started.replace(/[:.]/g, "-");
    const blob = format === "csv" ? new Blob([session.toCSV()], { type: "text/csv" })
      : new Blob([JSON.stringify(session)], { type: "application/json" });
    this.download(blob, `ferkit-session-${stamp}.${format}`);
  }
}

function clear(canvas) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.font = "11px sans-serif";
  context.fillStyle = TEXT;
  return context;
}

// The classes' names down the right-hand side, in their colours; returns the plot's width.
function legend(context, names, palette) {
  const width = context.canvas.width - 70;
  names.forEach((name, k) => {
    context.fillStyle = ferkitColor(name, palette);  // drawing.js
    context.fillRect(width + 6, 4 + 13 * k, 8, 8);
    context.fillStyle = TEXT;
    context.fillText(name, width + 18, 12 + 13 * k);
  });
  return width;
}

// One person's probabilities over the whole session (x: seconds from the start), a line per class, broken where
// the person was not seen.
function drawPersonTimeline(canvas, session, id, palette) {
  const context = clear(canvas);
  if (session && session.aggregateOnly) { context.fillText("aggregate only: no per-person timeline is kept", 8, 20); return; }
  const rows = session && session.byId.get(id);
  if (!rows || rows.length < 2) { context.fillText("a person's emotions over the session appear here", 8, 20); return; }
  const names = session.settings.classNames, width = legend(context, names, palette);
  const span = Math.max(1, session.frames[session.frames.length - 1].time), plotHeight = canvas.height - 24;
  const x = (time) => (time / span) * width, y = (p) => 4 + (1 - p) * plotHeight;
  for (const name of names) {
    context.strokeStyle = ferkitColor(name, palette);
    context.beginPath();
    rows.forEach((row, i) => {
      const joined = i > 0 && row.frame === rows[i - 1].frame + 1;
      joined ? context.lineTo(x(row.time), y(row.probabilities[name])) : context.moveTo(x(row.time), y(row.probabilities[name]));
    });
    context.stroke();
  }
  axis(context, width, `#${id}`, `${span.toFixed(0)} s`);
}

// The share of faces with each label per bin, stacked from the bottom in the classes' order.
function drawShares(canvas, session, palette) {
  const context = clear(canvas);
  const bins = session ? session.bins() : [];
  if (!bins.length) { context.fillText("the class's emotion shares over time appear here", 8, 20); return; }
  const names = session.settings.classNames, width = legend(context, names, palette);
  const plotHeight = canvas.height - 24, barWidth = width / Math.max(bins.length, 6);
  bins.forEach((bin, k) => {
    let top = 4 + plotHeight;
    for (const name of names) {
      const height = bin.shares[name] * plotHeight;
      context.fillStyle = ferkitColor(name, palette);
      context.fillRect(k * barWidth + 1, top - height, Math.max(1, barWidth - 2), height);
      top -= height;
    }
  });
  axis(context, Math.max(bins.length, 6) * barWidth, `share of faces per ${session.settings.binSeconds} s`,
       `${Math.max(bins.length, 6) * session.settings.binSeconds} s`);
}

// Under a plot `width` wide: "0 s" at the left, `middle` in the middle, `end` at the right.
function axis(context, width, middle, end) {
  const y = context.canvas.height - 6;
  context.fillStyle = TEXT;
  context.fillText("0 s", 2, y);
  context.fillText(middle, (width - context.measureText(middle).width) / 2, y);
  context.fillText(end, width - context.measureText(end).width - 2, y);
}
