// The anywidget front end (ferkit.webcam.CameraWidget); camera.js, framerate.js and drawing.js are prepended
// to it (ferkit.webcam.CAMERA_JS).

function render({model, el}) {
  if (model.get("mode") === "snapshot") {
    ferkitTakePhoto(el, model.get("quality"), model.get("timeout_ms")).then((result) => {
      if (result.startsWith("error:")) model.set("error", result.slice(6));
      else model.set("frame", result);
      model.save_changes();
    });
    return;
  }
  // Live: send a small frame, wait for the kernel's faces, draw, repeat. Only one
  // frame is ever in flight, so a slow model drops frames instead of queueing them.
  let camera = null, overlay = null, running = true, lastFps = 0;
  const meter = ferkitFrameRateMeter();
  const root = document.createElement("div");
  el.appendChild(root);
  const stop = document.createElement("button");
  stop.textContent = "Stop";
  const readout = document.createElement("span");
  readout.className = "ferkit-fps";
  readout.style.marginLeft = "1em";
  const send = () => {
    if (!running) return;
    // The FPS travels with each frame: the kernel's copy of it is what Python reads.
    model.send({type: "frame", data: ferkitFrame(camera.video, model.get("frame_width"), FERKIT_LIVE_JPEG_QUALITY),
                width: camera.video.videoWidth, fps: lastFps});
  };
  model.on("msg:custom", (message) => {
    if (message.type !== "faces" || !running) return;
    const fps = meter.tick();
    ferkitDrawOverlay(overlay, camera.video, message.faces, fps);
    readout.textContent = ferkitFrameRateText(fps);
    lastFps = fps;
    send();
  });
  stop.onclick = () => {
    running = false;
    ferkitClose(camera, null);
    model.set("running", false);
    model.save_changes();
  };
  ferkitOpenCamera(root, FERKIT_LIVE_CAMERA_WIDTH).then((opened) => {
    camera = opened;
    overlay = ferkitOverlay(camera);
    root.appendChild(stop);
    root.appendChild(readout);
    model.set("running", true);
    model.save_changes();
    send();
  }).catch((error) => { model.set("error", ferkitExplain(error)); model.save_changes(); });
  return () => { running = false; ferkitClose(camera, null); };
}
export default { render };
