// Live mode in Colab: each eval_js call draws the last faces and returns the next frame.
// camera.js is prepended to it.

async function ferkitStream(facesJson, width) {
  if (!window.ferkitLive) {
    const root = document.createElement("div");
    document.body.appendChild(root);
    try { window.ferkitLive = {camera: await ferkitOpenCamera(root, 640), root, stop: false, times: []}; }
    catch (error) { root.remove(); return "error:" + ferkitExplain(error); }
    const stop = document.createElement("button");
    stop.textContent = "Stop";
    stop.onclick = () => { window.ferkitLive.stop = true; };
    root.appendChild(stop);
    const overlay = document.createElement("canvas");
    overlay.style.position = "absolute"; overlay.style.left = "0"; overlay.style.top = "0";
    overlay.style.width = "100%"; overlay.style.height = "100%";
    window.ferkitLive.camera.box.appendChild(overlay);
    window.ferkitLive.overlay = overlay;
  }
  const live = window.ferkitLive;
  if (live.stop) { ferkitClose(live.camera, live.root); window.ferkitLive = null; return "stop"; }
  let fps;
  ({ fps, times: live.times } = ferkitFrameRate(live.times));
  ferkitDrawOverlay(live.overlay, live.camera.video, JSON.parse(facesJson), fps);
  return JSON.stringify({frame: ferkitFrame(live.camera.video, width, 0.7), width: live.camera.video.videoWidth});
}
