// Faces drawn over an image or a live video: a box and "label NN%" per face, for the page's Live and Photo
// views, the notebook widget and Colab's live mode.
//
// Colours come from ferkit.settings (EMOTION_COLORS, UNKNOWN_COLOR), never from here: the page passes
// models/index.json's `colors` and `unknown_color`, the notebook's kernel sends each face's `color`.
// A classic script of function declarations, like camera.js (see framerate.js for why); the overlay's frame
// rate is written with framerate.js's ferkitFrameRateText.

// A class's colour: palette.colors[label], else palette.unknownColor.
function ferkitColor(label, { colors = {}, unknownColor } = {}) {
  return colors[label] || unknownColor;
}

// Black or white, whichever reads on a patch of `color` ("rgb(r,g,b)" or "#rrggbb"): the rule
// ferkit.prediction.annotate uses for the labels it draws.
function ferkitTextColor(color) {
  const hex = /^#([0-9a-f]{6})$/i.exec(color);
  const [r, g, b] = hex ? [0, 2, 4].map((i) => parseInt(hex[1].slice(i, i + 2), 16)) : (color.match(/\d+/g) || [255, 255, 255]).map(Number);
  return 0.299 * r + 0.587 * g + 0.114 * b > 128 ? "#000" : "#fff";
}

// faces: [{box: [x, y, width, height], label, score (0-1), id?, color?, scale?}]. A box is multiplied by its face's
// `scale` (the kernel analyses a smaller frame than the video shows) and drawn in `color` when the face has one,
// else in its label's colour from `palette` ({colors, unknownColor}); a tracked face's `id` leads its text
// ("#3 happy 80%"). Line width and type size follow the canvas: 2 and 16 pixels on a 640-pixel canvas.
function ferkitDrawFaces(context, faces, palette = {}) {
  const unit = Math.max(context.canvas.width, context.canvas.height) / 640;
  context.lineWidth = Math.max(1, Math.round(2 * unit));
  context.font = `${Math.max(12, Math.round(16 * unit))}px sans-serif`;
  for (const face of faces) {
    const [x, y, w, h] = face.box.map((v) => v * (face.scale ?? 1));
    const color = face.color || ferkitColor(face.label, palette);
    const text = `${face.id === undefined ? "" : `#${face.id} `}${face.label} ${Math.round(100 * face.score)}%`;
    context.strokeStyle = color;
    context.strokeRect(x, y, w, h);
    // The label sits on a patch of the box's colour above the box, or inside its top where there is no room.
    const textWidth = context.measureText(text).width, textHeight = Math.max(12, 16 * unit);
    const top = y - textHeight - 4 * unit < 0 ? y : y - textHeight - 4 * unit;
    context.fillStyle = color;
    context.fillRect(x, top, textWidth + 4 * unit, textHeight + 4 * unit);
    context.fillStyle = ferkitTextColor(color);
    context.fillText(text, x + 2 * unit, top + textHeight);
  }
}

// The notebook's live overlay (widget.js, colab_live.js): `canvas` sized to the video's frames, cleared, the
// kernel's faces drawn, and the frame rate written in the bottom-left corner.
function ferkitDrawOverlay(canvas, video, faces, fps) {
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  ferkitDrawFaces(context, faces);
  const unit = Math.max(canvas.width, canvas.height) / 640;
  context.fillStyle = "yellow";
  context.fillText(ferkitFrameRateText(fps), 8 * unit, canvas.height - 8 * unit);
}
