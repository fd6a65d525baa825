// Bundle the page scripts and their npm libraries into the Python package (no CDN at run time).
// `npm ci && npm run build` (scripts/setup does it) writes operator/splatops/gateway/static/dist/.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

const out = new URL("../operator/splatops/gateway/static/dist/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { list: "src/list.js", training: "src/training.js", viewer: "src/viewer.js" },
  bundle: true,
  splitting: true, // the 3D viewer (three + Spark, ~3 MB) loads only where a model is shown
  format: "esm",
  minify: true,
  target: ["es2020"],
  outdir: out,
  entryNames: "[name]",
  chunkNames: "chunk-[hash]",
  legalComments: "linked",
  logLevel: "info",
});
copyFileSync("node_modules/uplot/dist/uPlot.min.css", out + "uPlot.min.css");
