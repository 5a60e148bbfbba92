// atelier.LiveChart: inside the training nodes, the run as it happens: raw and smoothed loss, learning rate,
// epoch / step, it/s and ETA, and preview samples as they arrive. The history comes back after a page reload or in
// a second tab from the server (GET /atelier/train/runs), and exports as CSV. One feature, one file; the frontend's
// own app / api modules; callbacks chained, listeners dropped with the node.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAINERS = new Set(["AtelierTrainLoRA", "AtelierTrainLoRAAdvanced"]);
const WIDGET = "atelier_live";
const HEIGHT = 240;


function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(digits) : x.toExponential(2);
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

class LiveView {
  constructor(node) {
    this.node = node;
    this.run = null;
    this.points = [];
    this.samples = [];
    this.root = document.createElement("div");
    this.root.className = "atelier-live";
    this.root.dataset.atelierLive = "1";
    this.root.style.cssText = "display:flex;flex-direction:column;gap:4px;font:11px sans-serif;color:#ccc;";
    this.canvas = document.createElement("canvas");
    this.canvas.width = 480;
    this.canvas.height = 150;
    this.canvas.style.cssText = "width:100%;height:150px;background:#1b1b1b;border-radius:4px;";
    this.stats = document.createElement("div");
    this.stats.className = "atelier-live-stats";
    this.stats.textContent = "no training yet: queue the graph to see the loss here";
    this.thumbs = document.createElement("div");
    this.thumbs.className = "atelier-live-samples";
    this.thumbs.style.cssText = "display:flex;gap:4px;overflow-x:auto;min-height:0;";
    this.csv = document.createElement("a");
    this.csv.textContent = "export CSV";
    this.csv.style.cssText = "color:#8ab4f8;display:none;";
    this.csv.target = "_blank";
    this.root.append(this.canvas, this.stats, this.thumbs, this.csv);
    this.widget = node.addDOMWidget(WIDGET, "atelier_live", this.root, {
      serialize: false, // a view, not a setting: never in the workflow or the prompt
      getMinHeight: () => HEIGHT,
      getMaxHeight: () => HEIGHT,
    });
    this.draw();
  }

  begin(run) {
    if (this.run === run) return;
    this.run = run;
    this.points = [];
    this.samples = [];
    this.thumbs.replaceChildren();
    this.csv.href = api.apiURL(`/atelier/train/runs/${encodeURIComponent(run)}.csv`);
    this.csv.style.display = "inline";
  }

  addPoint(point) {
    this.points.push({ ...point, time: point.time ?? Date.now() / 1000 });
    this.draw();
  }

  addSamples(entry) {
    this.samples.push(entry);
    for (const image of entry.images || []) {
      const img = document.createElement("img");
      const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder, type: image.type });
      img.src = api.apiURL(`/view?${query}`);
      img.title = `epoch ${entry.epoch}, step ${entry.step}`;
      img.style.cssText = "height:64px;border-radius:3px;";
      img.className = "atelier-live-sample";
      this.thumbs.append(img);
    }
    while (this.thumbs.children.length > 24) this.thumbs.firstChild.remove();
  }

  async restore() {
    // the newest run of this node, from the server: a reload or a second tab sees the same history
    try {
      const runs = await (await api.fetchApi("/atelier/train/runs")).json();
      const mine = runs.find((r) => r.node === String(this.node.id));
      if (!mine) return;
      const data = await (await api.fetchApi(`/atelier/train/runs/${encodeURIComponent(mine.run)}`)).json();
      this.begin(mine.run);
      this.points = data.points || [];
      for (const entry of data.samples || []) this.addSamples(entry);
      this.draw();
    } catch (error) {
      console.warn("[atelier] could not restore the training history", error);
    }
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    ctx.clearRect(0, 0, width, height);
    const pts = this.points.filter((p) => Number.isFinite(p.loss));
    if (pts.length === 0) return;
    const losses = pts.flatMap((p) => [p.loss, p.smoothed].filter(Number.isFinite));
    const lo = Math.min(...losses), hi = Math.max(...losses);
    const span = hi - lo || 1;
    const first = pts[0].step, last = Math.max(pts[pts.length - 1].step, first + 1);
    const x = (step) => 8 + ((step - first) / (last - first)) * (width - 16);
    const y = (v) => height - 12 - ((v - lo) / span) * (height - 24);
    for (const [key, colour, lineWidth] of [["loss", "#5a7fa8", 1], ["smoothed", "#ffb347", 2]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = lineWidth;
      ctx.beginPath();
      pts.filter((p) => Number.isFinite(p[key])).forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.step), y(p[key])));
      ctx.stroke();
    }
    ctx.fillStyle = "#999";
    ctx.fillText(fmt(hi), 4, 10);
    ctx.fillText(fmt(lo), 4, height - 2);
    const p = this.points[this.points.length - 1];
    const recent = this.points.slice(-20);
    const rate = recent.length > 1 ? (recent[recent.length - 1].step - recent[0].step)
      / Math.max(recent[recent.length - 1].time - recent[0].time, 1e-9) : NaN;
    const eta = p.total && rate > 0 ? (p.total - p.step) / rate : NaN;
    this.stats.textContent = `step ${p.step}/${p.total ?? "?"} · epoch ${p.epoch ?? "?"} · loss ${fmt(p.loss)} `
      + `(smoothed ${fmt(p.smoothed)}) · lr ${fmt(p.lr, 6)} · ${Number.isFinite(rate) ? rate.toFixed(2) : "–"} it/s`
      + ` · ETA ${duration(eta)}`;
  }
}

function viewFor(nodeId, create = true) {
  // the graph's own node of that id (ids are final only once a node is in the graph, so nothing is keyed early);
  // the view is added on the first thing it has to show, so an idle node keeps its compact size
  const node = app.graph?.getNodeById(nodeId);
  if (!node || !TRAINERS.has(node.comfyClass)) return null;
  if (!node[WIDGET] && create) node[WIDGET] = new LiveView(node);
  return node[WIDGET] || null;
}

app.registerExtension({
  name: "atelier.LiveChart",
  setup() {
    api.addEventListener("atelier.train.step", ({ detail }) => {
      const view = viewFor(detail.node);
      if (!view) return;
      view.begin(detail.run);
      view.addPoint(detail);
    });
    api.addEventListener("atelier.train.sample", ({ detail }) => {
      const view = viewFor(detail.node);
      if (!view) return;
      view.begin(detail.run);
      view.addSamples(detail);
    });
  },
  async loadedGraphNode(node) {
    // a node restored from a saved or reloaded workflow: draw its newest run again, if the server has one
    if (!TRAINERS.has(node.comfyClass)) return;
    try {
      const runs = await (await api.fetchApi("/atelier/train/runs")).json();
      if (!runs.some((r) => r.node === String(node.id))) return;
    } catch (error) {
      console.warn("[atelier] could not list training runs", error);
      return;
    }
    await viewFor(node.id)?.restore();
  },
});
