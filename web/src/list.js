// `/`: every training of the namespace, live (polls /api/trainings).
import { age, el, getJSON, poll, progressBar, setError } from "./common.js";

const POLL_MS = 2000;

function row(t) {
  const href = `trainings/${encodeURIComponent(t.namespace)}/${encodeURIComponent(t.name)}`;
  const tr = el("tr", { "data-name": t.name, "data-phase": t.phase || "Pending", "data-step": String(t.step ?? "") },
    el("td", {}, el("a", { href }, t.name)),
    el("td", { class: `phase ${(t.phase || "Pending").toLowerCase()}` }, t.phase || "Pending"),
    el("td", {}, progressBar(t.percent)),
    el("td", { class: "num step" }, t.step != null ? `${t.step}/${t.maxSteps}` : ""),
    el("td", { class: "num" }, t.psnr != null ? t.psnr.toFixed(2) : ""),
    el("td", { class: "num" }, age(t.created)),
    el("td", { class: "message" }, t.message || ""),
  );
  return tr;
}

async function refresh() {
  const data = await getJSON("api/trainings");
  const body = document.getElementById("trainings");
  body.replaceChildren(...data.items.map(row));
  document.getElementById("empty").hidden = data.items.length > 0;
  document.getElementById("namespace").textContent = data.namespace || "";
  document.body.dataset.updated = String(Date.now());
}

poll(refresh, POLL_MS, setError);
