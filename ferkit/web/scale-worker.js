// Decodes a photo and scales it to the detector's pixel budget off the page's thread, so that a large photo
// (an 8000x6000 camera file is 48 megapixels) never blocks the page; refuses one over the pixel limit before
// decoding it, as ferkit.images.load_image does (`--max-pixels`).
//
// In:  {file: File, maxImagePixels, budgetPixels}  (index.json's max_image_pixels and detector.max_pixels)
// Out: {width, height, data (RGBA, transferred), originalWidth, originalHeight} or {error, refused?}.

// The width and height an image file's header declares (PNG, JPEG, GIF, BMP, WebP), or null where it cannot tell.
function declaredSize(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ascii = (at, n) => String.fromCharCode(...bytes.subarray(at, at + n));
  if (bytes.length >= 24 && bytes[0] === 0x89 && ascii(1, 3) === "PNG" && ascii(12, 4) === "IHDR") return [view.getUint32(16), view.getUint32(20)];
  if (bytes.length >= 10 && ascii(0, 3) === "GIF") return [view.getUint16(6, true), view.getUint16(8, true)];
  if (bytes.length >= 26 && ascii(0, 2) === "BM") return [Math.abs(view.getInt32(18, true)), Math.abs(view.getInt32(22, true))];
  if (bytes.length >= 30 && ascii(0, 4) === "RIFF" && ascii(8, 4) === "WEBP") {
    const chunk = ascii(12, 4);
    if (chunk === "VP8X") return [1 + (view.getUint32(24, true) & 0xffffff), 1 + (view.getUint32(27, true) & 0xffffff)];
    if (chunk === "VP8L") { const b = view.getUint32(21, true); return [1 + (b & 0x3fff), 1 + ((b >> 14) & 0x3fff)]; }
    if (chunk === "VP8 ") return [view.getUint16(26, true) & 0x3fff, view.getUint16(28, true) & 0x3fff];
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {  // JPEG: walk the segments to the frame header (SOFn)
    let at = 2;
    while (at + 9 < bytes.length) {
      if (bytes[at] !== 0xff) return null;
      const marker = bytes[at + 1];
      if (marker === 0xff) { at += 1; continue; }
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return [view.getUint16(at + 7), view.getUint16(at + 5)];
      }
      at += 2 + view.getUint16(at + 2);
    }
  }
  return null;
}

const megapixels = (n) => `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} megapixels`;

function refusal(name, width, height, limit) {
  return `${name}: ${width}x${height} is ${megapixels(width * height)}; photos up to ${megapixels(limit)} are ` +
         "analysed (the limit of ferkit's --max-pixels): scale it down first";
}

onmessage = async ({ data: { file, maxImagePixels, budgetPixels } }) => {
  let bitmap = null;
  try {
    // The header is near the start; a JPEG's may follow up to 64 KB of camera metadata (EXIF, thumbnails).
    const head = new Uint8Array(await file.slice(0, 256 * 1024).arrayBuffer());
    const declared = declaredSize(head);
    if (declared && declared[0] * declared[1] > maxImagePixels) {
      postMessage({ refused: true, error: refusal(file.name, ...declared, maxImagePixels) });
      return;
    }
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      postMessage({ error: `${file.name}: this browser cannot decode it (damaged, or a format it does not read)` });
      return;
    }
    const { width, height } = bitmap;
    if (width * height > maxImagePixels) {  // a header this worker could not read
      postMessage({ refused: true, error: refusal(file.name, width, height, maxImagePixels) });
      return;
    }
    // Whole pixels at most the budget (rounded down), so the pipeline searches this copy as it is, as
    // ferkit.faces.detect_faces searches its downscaled copy.
    const scale = Math.min(1, Math.sqrt(budgetPixels / (width * height)));
    const w = Math.max(1, Math.floor(width * scale)), h = Math.max(1, Math.floor(height * scale));
    const canvas = new OffscreenCanvas(w, h);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, w, h);
    const pixels = context.getImageData(0, 0, w, h).data;
    postMessage({ width: w, height: h, data: pixels, originalWidth: width, originalHeight: height }, [pixels.buffer]);
  } catch (error) {
    postMessage({ error: `${file.name}: ${(error && error.message) || error}` });
  } finally {
    if (bitmap) bitmap.close();
  }
};
