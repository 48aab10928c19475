// The console's only script. Every page works without it; it adds the copy button, confirmations,
// the search filter and the inspector's live view. Loaded from the console itself (CSP: 'self').
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // A page that answers a form was reached by POST: show its GET address, so that a reload reads
  // the page instead of sending the form again, and the live refresh below reads it too.
  var self = document.body.dataset.path;
  if (self && self !== window.location.pathname + window.location.search) window.history.replaceState(null, "", self);
  document.querySelectorAll("[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var el = document.getElementById(b.dataset.copy);
      if (!el || !navigator.clipboard) return;
      navigator.clipboard.writeText(el.textContent).then(function () { b.textContent = b.dataset.copied; });
    });
  });
  // Delegated, so that forms in a refreshed table ask too.
  document.addEventListener("submit", function (e) {
    var f = e.target;
    if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) e.preventDefault();
  });
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.dataset.filter);
    if (!table) return;
    input.addEventListener("input", function () {
      var q = input.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr[data-domain]").forEach(function (tr) {
        tr.hidden = q !== "" && tr.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  });
  // Live tables: the page is fetched again and the table swapped, so the server's rendering (and its
  // escaping) stays the only one.
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var every = Math.max(2, parseInt(el.dataset.refresh, 10) || 5) * 1000;
    setInterval(function () {
      if (document.hidden) return;
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } }).then(function (res) {
        if (!res.ok) return null;
        return res.text();
      }).then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(el.id);
        var now = document.getElementById(el.id);
        if (fresh && now) now.replaceChildren.apply(now, Array.from(fresh.childNodes));
      }).catch(function () {});
    }, every);
  });
  var entries = document.getElementById("entries");
  if (entries && window.EventSource) {
    var body = entries.querySelector("tbody");
    var es = new EventSource(entries.dataset.events);
    es.addEventListener("entry", function (ev) {
      var e = JSON.parse(ev.data);
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      var tr = document.createElement("tr");
      tr.className = "fresh";
      tr.dataset.id = e.id;
      var a = document.createElement("a");
      a.href = "/console/inspect/entry?domain=" + encodeURIComponent(entries.dataset.domain) + "&id=" + encodeURIComponent(e.id);
      a.textContent = e.path + (e.replay ? " \u21bb" : "");
      [e.time, e.method, a, String(e.status), e.duration, e.size].forEach(function (v) {
        var td = document.createElement("td");
        if (typeof v === "string") td.textContent = v; else td.appendChild(v);
        tr.appendChild(td);
      });
      body.insertBefore(tr, body.firstChild);
      while (body.rows.length > 100) body.deleteRow(body.rows.length - 1);
    });
  }
});
