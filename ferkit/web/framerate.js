// The frame rate every live view shows (the page's Live view, the notebook widget, Colab's live mode):
// frames over the last three seconds.
//
// A classic script of function declarations, like camera.js: the page loads it with a <script> tag, and
// ferkit.webcam concatenates it into the widget's module and into Colab's eval_js scripts, where imports do
// not work and the same script is evaluated again for every frame (function declarations may be repeated;
// a top-level const or class may not).

// A meter for one live view: meter.tick(now) counts a frame shown at `now` (ms, performance.now()'s clock)
// and returns the frames per second over the window ending there (0 until two frames are in it).
function ferkitFrameRateMeter(windowMs = 3000) {
  const times = [];  // ms, oldest first, all inside the window
  return {
    tick(now = performance.now()) {
      times.push(now);
      while (times[0] <= now - windowMs) times.shift();
      return times.length > 1 ? (times.length - 1) / ((now - times[0]) / 1000) : 0;
    },
  };
}

// A frame rate as every live view writes it: "12.3 FPS".
function ferkitFrameRateText(fps) {
  return fps.toFixed(1) + " FPS";
}
