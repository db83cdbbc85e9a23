// The queue page updates itself: every few seconds it fetches its live part (/live, with the same
// filters) and puts it in place; the filters apply as they change, without a reload.
"use strict";
(function () {
  const live = document.getElementById("live");
  const form = document.getElementById("filters");
  const every = 1000 * Number(live.dataset.pollSeconds || 2);
  let pending = null;

  function query() {
    const params = new URLSearchParams(new FormData(form));
    const page = new URLSearchParams(location.search).get("page");
    if (page) params.set("page", page);
    return params.toString();
  }

  async function refresh() {
    if (pending) return;
    pending = fetch("/live?" + query(), { credentials: "same-origin", cache: "no-store" });
    try {
      const response = await pending;
      if (response.ok) {
        live.innerHTML = await response.text();
        window.localTimes(live);
        live.dataset.updated = String(Date.now());
        live.classList.remove("stale");
      } else {
        live.classList.add("stale");
      }
    } catch (e) {
      live.classList.add("stale"); // the page process stopped: keep what is shown, try again
    } finally {
      pending = null;
    }
  }

  let typing = null;
  function filtersChanged() {
    clearTimeout(typing);
    typing = setTimeout(function () {
      const params = new URLSearchParams(new FormData(form));
      history.replaceState(null, "", "/?" + params.toString());
      refresh();
    }, 250);
  }
  form.addEventListener("input", filtersChanged);
  form.addEventListener("submit", function (e) { e.preventDefault(); filtersChanged(); });
  setInterval(function () { if (!document.hidden) refresh(); }, every);
})();
