// The events page's live list: new rows arrive as server-sent events (JSON) and are added on top.
// Text goes in with textContent only, so a name can never become markup.
"use strict";
(function () {
  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function addRow(body, e) {
    const row = document.createElement("tr");
    row.className = "kind-" + e.kind + " fresh";
    row.dataset.id = e.id;
    cell(row, e.id); cell(row, e.time); cell(row, e.door); cell(row, e.kind);
    const person = cell(row, "");
    if (e.person_id) {
      const link = document.createElement("a");
      link.href = "/people/" + encodeURIComponent(e.person_id);
      link.textContent = e.person;
      person.appendChild(link);
    } else {
      person.textContent = e.person;
    }
    cell(row, e.score); cell(row, e.reason);
    const snap = cell(row, "");
    if (e.snapshot) {
      const img = document.createElement("img");
      img.src = "/events/" + encodeURIComponent(e.id) + "/snapshot";
      img.alt = "snapshot";
      img.width = 64;
      snap.appendChild(img);
    }
    body.insertBefore(row, body.firstChild);
  }

  function live() {
    const marker = document.getElementById("live");
    const body = document.getElementById("event-rows");
    if (!marker || !body || !window.EventSource) return;
    const query = marker.dataset.query ? marker.dataset.query + "&" : "";
    const source = new EventSource("/events/stream?" + query + "after=" + encodeURIComponent(marker.dataset.after));
    source.addEventListener("open", function () { marker.textContent = "live: new events appear on top"; });
    source.addEventListener("row", function (message) { addRow(body, JSON.parse(message.data)); });
    source.addEventListener("ended", function () { source.close(); marker.textContent = "session ended: log in again"; });
    source.addEventListener("error", function () { marker.textContent = "reconnecting…"; });
  }

  document.addEventListener("DOMContentLoaded", live);
})();
