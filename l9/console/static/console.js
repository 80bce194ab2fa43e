/* The L9 console's own script: htmx settings, deadline countdowns, anchor key files read into
   their form, and a cap on the rows a live trail keeps. */
(function () {
  "use strict";
  // Show what the server says when it refuses (401, 403, 404, 409...) instead of nothing.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: true },
  ];

  function countdowns() {
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var left = Math.round((Date.parse(el.dataset.deadline) - Date.now()) / 1000);
      if (isNaN(left)) return;
      if (left <= 0) {
        el.textContent = "deadline passed: a denial";
        el.classList.add("late");
      } else {
        var m = Math.floor(left / 60), s = left % 60;
        el.textContent = "deadline in " + (m ? m + " min " : "") + s + " s";
      }
    });
  }
  setInterval(countdowns, 1000);
  document.addEventListener("DOMContentLoaded", countdowns);
  document.addEventListener("htmx:afterSwap", countdowns);

  // An anchor's key file, chosen in the form, goes into the form's key field (never uploaded apart).
  document.addEventListener("change", function (ev) {
    var input = ev.target;
    if (!input.dataset || !input.dataset.keyInto || !input.files || !input.files[0]) return;
    input.files[0].text().then(function (text) {
      var target = document.getElementById(input.dataset.keyInto);
      if (target) target.value = text.trim();
    });
  });

  // The dot in the corner: green while the page's event stream is open.
  function live(on) {
    var dot = document.getElementById("live-dot");
    if (!dot) return;
    dot.classList.toggle("off", !on);
    dot.title = on ? "live: updates as it changes" : "not live (reconnecting, or nothing to follow)";
  }
  document.addEventListener("htmx:sseOpen", function () { live(true); });
  document.addEventListener("htmx:sseError", function () { live(false); });

  // A live trail keeps its newest 500 rows.
  document.addEventListener("htmx:sseMessage", function (ev) {
    var body = document.getElementById("entries");
    if (!body) return;
    var empty = document.getElementById("no-entries");
    if (empty && body.rows.length) empty.remove();
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
})();
