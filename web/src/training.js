// `/trainings/{namespace}/{name}`: status, curves, preview, events, log lines, downloads and the model in 3D.
import uPlot from "uplot";
import { age, bytes, el, getJSON, poll, progressBar, setError } from "./common.js";

const POLL_MS = 2000;
const VIEWABLE = ["spz", "splat", "ply"]; // in order of preference: SPZ is ~10x smaller
const charts = {};
let viewerUrl = null;
let metricsKey = null;

function field(label, value) {
  return el("div", { class: "field" }, el("span", { class: "label" }, label), el("span", {}, value ?? ""));
}

function chart(id, title, label, xs, ys, color) {
  const box = document.getElementById(id);
  const data = [xs, ys];
  if (charts[id]) {
    charts[id].setData(data);
    return;
  }
  box.replaceChildren();
  charts[id] = new uPlot({
    title, width: Math.max(box.clientWidth, 300), height: 220,
    scales: { x: { time: false } },
    series: [{ label: "step" }, { label, stroke: color, width: 2, spanGaps: true }],
    axes: [{ label: "step" }, { label }],
  }, data, box);
}

async function refreshMetrics(base, t) {
  const key = `${t.progress?.step}/${t.phase}`;
  if (key === metricsKey) return;
  metricsKey = key;
  const { points } = await getJSON(`${base}/metrics`);
  const progress = points.filter((p) => p.event !== "eval");
  const evals = points.filter((p) => p.psnr != null);
  chart("loss", "Training loss", "loss", progress.map((p) => p.step), progress.map((p) => p.loss), "#e07b39");
  chart("psnr", "Held-out PSNR (dB)", "PSNR", evals.map((p) => p.step), evals.map((p) => p.psnr), "#3987e0");
}

function renderSummary(t) {
  const p = t.progress || {};
  document.getElementById("title").textContent = t.name;
  document.getElementById("summary").replaceChildren(
    field("Phase", el("span", { class: `phase ${(t.phase || "Pending").toLowerCase()}`, id: "phase" }, t.phase || "Pending")),
    field("Progress", progressBar(p.percent)),
    field("Step", p.step != null ? `${p.step}/${p.maxSteps}` : ""),
    field("Loss", p.loss != null ? p.loss.toFixed(4) : ""),
    field("PSNR", p.psnr != null ? `${p.psnr.toFixed(2)} dB` : ""),
    field("Gaussians", p.numGaussians ?? ""),
    field("Steps/s", p.stepsPerSec ?? ""),
    field("Age", age(t.created)),
    field("Message", t.message || p.message || ""),
  );
}

function renderFiles(t) {
  const list = document.getElementById("downloads");
  list.replaceChildren(...t.outputs.map((o) =>
    el("li", {}, el("a", { href: o.url, download: o.download }, o.download), ` ${o.name}, ${bytes(o.bytes)}`)));
  document.getElementById("no-downloads").hidden = t.outputs.length > 0;
  const preview = document.getElementById("preview");
  if (t.preview && preview.dataset.src !== t.preview) {
    preview.dataset.src = t.preview;
    preview.src = t.preview;
  }
  preview.hidden = !t.preview;
  document.getElementById("no-preview").hidden = Boolean(t.preview);
}

function renderEvents(t) {
  document.getElementById("events").replaceChildren(...t.events.map((e) =>
    el("tr", { class: e.type === "Warning" ? "warning" : "" },
      el("td", {}, age(e.time)), el("td", {}, e.type), el("td", {}, e.reason), el("td", {}, e.message))));
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = t.logs.join("\n");
  if (atEnd || !log.dataset.shown) log.scrollTop = log.scrollHeight; // follow the newest lines
  log.dataset.shown = "true";
}

async function maybeShowModel(t) {
  const model = VIEWABLE.map((f) => t.outputs.find((o) => o.name === f)).find(Boolean);
  if (!model || model.url === viewerUrl) return;
  viewerUrl = model.url;
  const box = document.getElementById("viewer");
  box.textContent = `loading ${model.download} ...`;
  const { showModel } = await import("./viewer.js"); // three.js + Spark only here
  try {
    await showModel(box, model.url, model.name);
    document.getElementById("viewer-note").textContent = `${model.download} (${bytes(model.bytes)}): drag to orbit, wheel to zoom`;
  } catch (err) {
    box.textContent = `the viewer could not load ${model.download}: ${err.message}`;
    viewerUrl = null;
    throw err;
  }
}

const base = document.body.dataset.api;
poll(async () => {
  const t = await getJSON(base);
  renderSummary(t);
  renderFiles(t);
  renderEvents(t);
  await refreshMetrics(base, t);
  await maybeShowModel(t);
  document.body.dataset.updated = String(Date.now());
}, POLL_MS, setError);
