// Sprint's frontend extension: per-node badges (model calls used/saved, stop step and estimated
// error, cache hit rate, engine backend and fallbacks, unconditional passes left out, and the text
// reports of Sprint nodes, which this frontend does not draw), toasts with progress for
// engine builds, and the default preset of fresh Sprint sampler nodes. All optional: headless and
// API use never need it, and an event that never comes only means no badge is drawn.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PRESET_SETTING = "Sprint.DefaultPreset";
const PRESETS = ["draft", "balanced", "quality"];
const COLORS = { ok: "#1f6f43", warn: "#9a5b00" };
const LINE_HEIGHT = 16;
const MAX_CHARS = 72;   // longer lines are cut on the canvas (node.sprintBadge.text keeps them whole)
// Nodes whose text report (ui.PreviewText) the frontend would not draw: the badge shows it,
// wrapped, unless an event line already carries the same numbers.
const REPORT_IN_EVENT = new Set(["SprintKSampler"]);

const percent = (part, whole) => (whole > 0 ? `${Math.round((100 * part) / whole)}%` : "–");

// Event `sprint.<name>` -> [line text, color] for the executing node's badge, or null. The
// payloads are those the nodes send (nodes/*.py, common.send_event); every field may be missing.
const FORMATS = {
  // As nodes/sampler.py's report_text words it: an early stop names its step; a run that saved
  // nothing spent its whole budget (the budget bound it), so there is no stop step to show.
  sampler: (d) => {
    const error = Number.isFinite(d.est_error) ? ` · est. error ${d.est_error.toPrecision(2)}` : "";
    const outcome = d.saved > 0 ? `${d.saved} saved · settled at step ${d.stop_step}` : `whole ${d.budget}-call budget spent`;
    return [`${d.calls}/${d.budget} model calls · ${outcome}${error}`, "ok"];
  },
  dynamic_cfg: (d) => [`dynamic CFG: ${d.uncond_skipped} uncond passes skipped`, "ok"],
  prompt_cache: (d) => {
    const hits = (d.hits_memory ?? 0) + (d.hits_disk ?? 0);
    const outcome = d.outcome ? `${d.outcome.split(":")[0]} · ` : "";
    return [`prompt cache: ${outcome}${percent(hits, hits + (d.misses ?? 0))} hits`, "ok"];
  },
  engine: (d) => {
    if (d.fallback) return [`engine: PyTorch fallback (${d.fallback})`, "warn"];
    if (d.status === "ready") return [`engine: ${d.backend} ${d.precision}`, "ok"];
    if (d.status === "building") return [`engine: building ${d.backend} ${d.precision}`, "ok"];
    if (d.status === "calibrating") return ["engine: INT8 calibration run (PyTorch)", "warn"];
    return null;
  },
};

function targetNode(detail) {
  // Execution ids of nodes inside subgraphs are "outer:inner"; badge the top-level node.
  const id = String(detail?.node ?? "").split(":")[0];
  return id && app.graph ? app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id) : null;
}

const fit = (text) => (text.length > MAX_CHARS ? `${text.slice(0, MAX_CHARS - 1)}…` : text);

function drawBadge(node, ctx) {
  const badge = node.sprintBadge;
  const lines = Object.values(badge?.lines ?? {}).map(([text, color]) => [fit(text), color]);
  if (!lines.length || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  const width = Math.max(...lines.map(([text]) => ctx.measureText(text).width)) + 12;
  const top = -LiteGraph.NODE_TITLE_HEIGHT - 6 - lines.length * LINE_HEIGHT;
  lines.forEach(([text, color], i) => {
    const y = top + i * LINE_HEIGHT;
    ctx.fillStyle = COLORS[color] ?? COLORS.ok;
    ctx.beginPath();
    ctx.roundRect ? ctx.roundRect(0, y, width, LINE_HEIGHT - 2, 4) : ctx.rect(0, y, width, LINE_HEIGHT - 2);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.fillText(text, 6, y + LINE_HEIGHT - 5);
  });
  badge.drawn = [0, top, width, lines.length * LINE_HEIGHT];   // node-relative, where it last appeared
  ctx.restore();
}

// One line per event kind; a node's lines from an earlier prompt are dropped when a new one reports.
function setLine(node, kind, line, promptId) {
  if (!node.sprintBadge || node.sprintBadge.prompt !== promptId) {
    node.sprintBadge = { prompt: promptId, lines: {} };
  }
  node.sprintBadge.lines[kind] = line;
  node.sprintBadge.text = Object.values(node.sprintBadge.lines).map(([text]) => text).join("\n");
  if (!node.sprintDraws) {
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      const result = draw?.apply(this, arguments);
      drawBadge(this, ctx);
      return result;
    };
    node.sprintDraws = true;
  }
  app.graph?.setDirtyCanvas(true, true);
}

// "a | b, c" -> lines of at most MAX_CHARS, broken at " | " first, then between words.
function wrap(text) {
  const lines = [];
  for (const part of String(text).split(" | ")) {
    let line = "";
    for (const word of part.split(" ")) {
      if (line && line.length + 1 + word.length > MAX_CHARS) { lines.push(line); line = word; }
      else line = line ? `${line} ${word}` : word;
    }
    lines.push(line);
  }
  return lines;
}

function onExecuted({ detail }) {
  const node = targetNode(detail);
  const text = detail?.output?.text;
  if (!node?.comfyClass?.startsWith("Sprint") || REPORT_IN_EVENT.has(node.comfyClass) || !text?.length) return;
  wrap(text.join(" | ")).forEach((line, i) => setLine(node, `report${i}`, [line, "ok"], detail.prompt_id));
}

function toast(message) {
  app.extensionManager?.toast?.add(message);
  return message;
}

// Engine builds: a toast that follows the build's progress bar (ComfyUI "progress" events of
// the node that builds), closed when the engine is ready or the run ends.
const build = { node: null, toast: null, title: "" };

function showBuild(detail) {
  app.extensionManager?.toast?.remove?.(build.toast);
  build.toast = toast({ severity: "info", summary: "Sprint engine", detail, life: build.node ? undefined : 4000 });
}

function endBuild() {
  if (build.node == null) return;
  build.node = null;
  app.extensionManager?.toast?.remove?.(build.toast);
  build.toast = null;
}

function onEngine(d) {
  if (d.status === "building") {
    build.node = d.node;
    build.title = `Building the ${d.backend} ${d.precision} UNet engine`;
    showBuild(`${build.title}…`);
  } else if (d.status === "ready") {
    endBuild();
    const size = d.bytes ? ` (${(d.bytes / 2 ** 20).toFixed(0)} MB)` : "";
    toast({ severity: "success", summary: "Sprint engine", detail: `${d.backend} ${d.precision} engine ready${size}`, life: 4000 });
  } else if (d.status === "calibrating") {
    toast({ severity: "info", summary: "Sprint engine", life: 6000,
            detail: "INT8 calibration: this run samples in PyTorch; the INT8 engine is built when it ends" });
  } else if (d.fallback) {
    toast({ severity: "warn", summary: "Sprint engine: running PyTorch", detail: d.fallback, life: 8000 });
  }
}

function onProgress({ detail }) {
  if (build.node == null || String(detail?.node) !== String(build.node) || !detail.max) return;
  showBuild(`${build.title}: ${percent(detail.value, detail.max)}`);
}

app.registerExtension({
  name: "Sprint.Extension",
  settings: [
    {
      id: PRESET_SETTING,
      category: ["Sprint", "Sampler", "Default preset"],
      name: "Preset of new Sprint sampler nodes",
      tooltip: "draft: fewest model calls; balanced: the default; quality: tightest error tolerance. "
             + "Workflows you open keep their saved preset.",
      type: "combo",
      options: PRESETS,
      defaultValue: "balanced",
    },
  ],

  setup() {
    for (const [kind, format] of Object.entries(FORMATS)) {
      api.addEventListener(`sprint.${kind}`, ({ detail }) => {
        if (kind === "engine") onEngine(detail ?? {});
        const node = targetNode(detail);
        const line = node && format(detail);
        if (line) setLine(node, kind, line, detail.prompt_id);
      });
    }
    api.addEventListener("progress", onProgress);
    api.addEventListener("executed", onExecuted);
    for (const end of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(end, endBuild);
    }
  },

  nodeCreated(node) {
    // Fresh nodes take the setting; a loaded workflow's saved value is applied after this.
    if (!node.comfyClass?.startsWith("Sprint")) return;
    const preset = node.widgets?.find((w) => w.name === "preset");
    const settings = app.extensionManager?.setting;
    const wanted = settings?.get ? settings.get(PRESET_SETTING) : app.ui?.settings?.getSettingValue?.(PRESET_SETTING);
    if (preset && preset.options?.values?.includes(wanted)) preset.value = wanted;
  },
});
