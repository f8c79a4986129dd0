// Drover's fleet page: keeps each page's live part current by fetching it
// again every two seconds (the server renders and escapes it; this script
// only puts the new part in place). Without it the page reads the same, as
// of its loading.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  var live = document.querySelector("[data-live]");
  if (!live) {
    return;
  }
  var url = live.getAttribute("data-live");
  var stopped = false;
  function ended() {
    stopped = true;
    var banner = document.getElementById("session-ended");
    if (banner) {
      banner.hidden = false;
    }
  }
  function refresh() {
    if (stopped) {
      return;
    }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          ended();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text === null) {
          return;
        }
        // An inert document: nothing in it runs or loads.
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("[data-live]");
        if (fresh) {
          live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes).map(function (n) {
            return document.importNode(n, true);
          }));
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {
        // The coordinator is away for a moment: try again next period.
      })
      .finally(function () {
        if (!stopped) {
          setTimeout(refresh, PERIOD_MS);
        }
      });
  }
  setTimeout(refresh, PERIOD_MS);
})();
