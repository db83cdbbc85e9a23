// The transcript follows the recording: the cue being spoken is highlighted and kept in view;
// clicking a cue plays the recording from there.
"use strict";
(function () {
  const audio = document.getElementById("player");
  const list = document.getElementById("cues");
  if (!audio || !list) return;
  const cues = Array.from(list.children);
  const starts = cues.map(function (li) { return Number(li.dataset.start); });
  const ends = cues.map(function (li) { return Number(li.dataset.end); });
  let current = -1;
  let userScrolled = 0;

  function at(time) { // the last cue that starts at or before `time`, if it is still on screen then
    let lo = 0, hi = starts.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= time) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found >= 0 && time < ends[found] ? found : -1;
  }

  function follow() {
    const index = at(audio.currentTime);
    if (index === current) return;
    if (current >= 0) { cues[current].classList.remove("now"); cues[current].removeAttribute("aria-current"); }
    current = index;
    list.dataset.current = String(index);
    if (index < 0) return;
    cues[index].classList.add("now");
    cues[index].setAttribute("aria-current", "true");
    if (Date.now() - userScrolled > 4000) cues[index].scrollIntoView({ block: "center", behavior: "smooth" });
  }

  function tick() { follow(); if (!audio.paused) requestAnimationFrame(tick); }
  audio.addEventListener("play", function () { requestAnimationFrame(tick); });
  audio.addEventListener("timeupdate", follow);
  audio.addEventListener("seeked", follow);
  window.addEventListener("wheel", function () { userScrolled = Date.now(); }, { passive: true });
  window.addEventListener("touchmove", function () { userScrolled = Date.now(); }, { passive: true });
  list.addEventListener("click", function (e) {
    const li = e.target.closest("li");
    if (!li) return;
    userScrolled = 0;
    audio.currentTime = Number(li.dataset.start);
    audio.play();
  });
})();
