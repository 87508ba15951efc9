// Box geometry shared by the page's detector and tracker: boxes are [x, y, width, height].

// Intersection over union, as ferkit.faces.box_iou (0 for two empty boxes).
export function iou(a, b) {
  const w = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
  const h = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
  const union = a[2] * a[3] + b[2] * b[3] - w * h;
  return union ? (w * h) / union : 0;
}
