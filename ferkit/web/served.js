// Opened from file://, the browser runs no module script (app.js) and fetches no model: the page says it must
// be served, instead of showing "loading models…" for ever. A classic script, as such pages still run them.
if (location.protocol === "file:") {
  document.addEventListener("DOMContentLoaded", () => {
    const message = "This page must be served to work: run python -m ferkit serve, or put the folder that " +
      "python -m ferkit export-web wrote on any web server (e.g. python -m http.server in that folder).";
    const status = document.getElementById("status");
    status.textContent = "not served: see below";
    const notice = Object.assign(document.createElement("p"), { id: "not-served", className: "problem", textContent: message });
    notice.setAttribute("role", "alert");
    document.querySelector("main").prepend(notice);
  });
}
