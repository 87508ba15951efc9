// Live mode in Colab: each eval_js call draws the last faces and returns the next frame.
// camera.js, framerate.js and drawing.js are prepended to it (ferkit.webcam.CAMERA_JS); window.ferkitLive keeps
// the camera, the overlay and the frame-rate meter from one call to the next.

async function ferkitStream(facesJson, width) {
  if (!window.ferkitLive) {
    const root = document.createElement("div");
    document.body.appendChild(root);
    try {
      const camera = await ferkitOpenCamera(root, FERKIT_LIVE_CAMERA_WIDTH);
      window.ferkitLive = {camera, root, stop: false, meter: ferkitFrameRateMeter()};
    } catch (error) {
      root.remove();
      return "error:" + ferkitExplain(error);
    }
    const stop = document.createElement("button");
    stop.textContent = "Stop";
    stop.onclick = () => { window.ferkitLive.stop = true; };
    root.appendChild(stop);
    window.ferkitLive.overlay = ferkitOverlay(window.ferkitLive.camera);
  }
  const live = window.ferkitLive;
  if (live.stop) { ferkitClose(live.camera, live.root); window.ferkitLive = null; return "stop"; }
  ferkitDrawOverlay(live.overlay, live.camera.video, JSON.parse(facesJson), live.meter.tick());
  const frame = ferkitFrame(live.camera.video, width, FERKIT_LIVE_JPEG_QUALITY);
  return JSON.stringify({frame, width: live.camera.video.videoWidth});
}
