// Times are served in UTC; show them in the reader's own time zone.
"use strict";
window.localTimes = function (root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) {
      el.title = el.textContent;
      el.textContent = when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    }
  }
};
window.localTimes(document);
