// flowmed console: draws the charts whose Plotly figures the page embeds as JSON, and copies SQL to the clipboard.
// No inline scripts (the Content-Security-Policy forbids them); nothing is fetched from another site.
"use strict";

function drawCharts() {
  document.querySelectorAll("[data-figure]").forEach(function (el) {
    var spec = document.getElementById(el.dataset.figure);
    if (!spec) { return; }
    var fig = JSON.parse(spec.textContent);
    var config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
    Plotly.newPlot(el, fig.data, fig.layout, config).then(function () {
      el.dataset.rendered = "1";
      document.body.dataset.chartsRendered = String(document.querySelectorAll("[data-rendered='1']").length);
    });
  });
}

function copyText(text, button) {
  function done() {
    var label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1200);
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
  } else {
    fallbackCopy(text);
    done();
  }
}

function fallbackCopy(text) {
  var area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "absolute";
  area.style.left = "-9999px";
  document.body.appendChild(area);
  area.select();
  try { document.execCommand("copy"); } catch (e) { /* the text stays selectable in the page */ }
  document.body.removeChild(area);
}

document.addEventListener("DOMContentLoaded", function () {
  document.body.dataset.chartsRendered = "0";
  document.body.dataset.charts = String(document.querySelectorAll("[data-figure]").length);
  drawCharts();
  document.querySelectorAll("button.explain-toggle").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = document.getElementById(button.dataset.row);
      row.hidden = !row.hidden;
      button.classList.toggle("open", !row.hidden);
    });
  });
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      copyText(document.getElementById(button.dataset.copy).textContent, button);
    });
  });
});
