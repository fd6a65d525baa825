// Shared helpers of the two pages: JSON polling and formatting.

export async function getJSON(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return resp.json();
}

// Call `fn` now and every `ms` while the page is open; errors are shown, polling goes on.
export function poll(fn, ms, onError) {
  let stopped = false;
  const tick = async () => {
    try {
      await fn();
      onError(null);
    } catch (err) {
      onError(err);
    }
    if (!stopped) setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; };
}

export function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

export function progressBar(percent) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuenow": String(p) }, el("div", { style: `width:${p}%` }));
  bar.title = `${p.toFixed(1)}%`;
  return bar;
}

export function setError(err) {
  const box = document.getElementById("error");
  if (!box) return;
  box.textContent = err ? `Cannot reach the gateway: ${err.message}` : "";
  box.hidden = !err;
}
