// Drives the real ComfyUI frontend in headless Chromium for tests/browser/test_browser.py:
//   node drive.mjs <config.json>   (config written by the test; the result JSON goes to config.result)
// It only records what it sees (logs, graphs, prompts, badges, screenshots); the test judges.
import fs from "node:fs";
import path from "node:path";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = await import(path.join(config.node_modules, "playwright-core", "index.mjs"));
const shot = (name) => path.join(config.artifacts, `${name}.png`);
const result = { logs: [], http_errors: [], extensions: [], workflows: {}, runs: {} };
let phase = "load";

// The first page load would otherwise open the templates dialog by itself.
await fetch(`${config.url}/api/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });

const browser = await chromium.launch({
  executablePath: config.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("console", (m) => {
    if (m.type() === "error") result.logs.push({ phase, kind: "console", text: m.text(), url: m.location()?.url ?? "" });
  });
  page.on("pageerror", (e) => result.logs.push({ phase, kind: "pageerror", text: e.message, url: e.stack ?? "" }));
  page.on("response", (r) => { if (r.status() >= 400) result.http_errors.push({ phase, status: r.status(), url: r.url() }); });
  page.on("requestfailed", (r) => result.http_errors.push({ phase, status: 0, url: r.url(), text: r.failure()?.errorText }));

  await page.goto(config.url);
  await page.waitForFunction(() => window.app?.graph && Object.keys(window.LiteGraph?.registered_node_types ?? {})
    .some((t) => t.startsWith("Sprint")), null, { timeout: 120000 });
  await page.waitForTimeout(2000);   // extensions' setup() and the first draw
  result.extensions = await page.evaluate(() => app.extensions.map((e) => e.name));
  result.preset = await page.evaluate(async () => {
    // The default-preset setting reaches every fresh Sprint node that has a preset widget.
    const settings = app.extensionManager.setting;
    const before = settings.get("Sprint.DefaultPreset");
    await settings.set("Sprint.DefaultPreset", "draft");
    const presets = {};
    for (const type of Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith("Sprint"))) {
      const node = LiteGraph.createNode(type);
      const widget = node?.widgets?.find((w) => w.name === "preset");
      if (widget) presets[type] = widget.value;
    }
    // Left at "draft": opened workflows must keep their saved preset (the twins check it).
    return { default: before, fresh_nodes: presets };
  });
  await page.screenshot({ path: shot("loaded") });

  // The real UI path: Templates dialog -> Custom Nodes / <pack> -> the workflow's card.
  const openTemplate = async (name) => {
    await page.evaluate(() => app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    const dialog = page.getByRole("dialog");
    await dialog.getByRole("option", { name: config.pack, exact: true }).click();
    await page.screenshot({ path: shot(`templates-${config.pack}`) });
    await dialog.locator(`[data-testid="template-workflow-${name}"]`).click();
    await page.waitForFunction((n) => !document.querySelector(`[data-testid="template-workflow-${n}"]`), name, { timeout: 30000 });
    await page.waitForTimeout(1500);   // a missing-nodes dialog would show by now
  };

  // The opened graph's geometry in graph space: node boxes (title bar included), group boxes,
  // each wire sampled along the spline the frontend draws (pathRenderer's control points:
  // max(30, distance / 4) out of the output to the right and into the input from the left), and
  // the view: scale, offset, canvas size and whether text is drawn at this zoom.
  const geometry = () => page.evaluate(() => {
    app.canvas.draw(true, true);
    const box = (n) => [...n.boundingRect];
    const nodes = app.graph.nodes.map((n) => ({ id: n.id, type: n.type, title: n.title, mode: n.mode, box: box(n) }));
    const links = [];
    for (const link of (app.graph.links instanceof Map ? app.graph.links.values() : Object.values(app.graph.links))) {
      if (!link) continue;
      const from = app.graph.getNodeById(link.origin_id), to = app.graph.getNodeById(link.target_id);
      const [ax, ay] = from.getOutputPos(link.origin_slot), [bx, by] = to.getInputPos(link.target_slot);
      const c = Math.max(30, Math.hypot(bx - ax, by - ay) * 0.25);
      const points = [];
      for (let i = 0; i <= 64; i++) {
        const t = i / 64, u = 1 - t;
        points.push([u * u * u * ax + 3 * u * u * t * (ax + c) + 3 * u * t * t * (bx - c) + t * t * t * bx,
                     u * u * u * ay + 3 * u * u * t * ay + 3 * u * t * t * by + t * t * t * by]);
      }
      links.push({ id: link.id, from: link.origin_id, to: link.target_id, points });
    }
    const el = app.canvas.canvas;
    return { nodes, links, groups: app.graph.groups.map((g) => ({ title: g.title, box: [...(g.boundingRect ?? g._bounding)] })),
             view: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset], width: el.clientWidth,
                     height: el.clientHeight, low_quality: app.canvas.low_quality } };
  });

  for (const name of config.workflows) {
    phase = `template:${name}`;
    await openTemplate(name);
    result.workflows[name] = await page.evaluate(async () => {
      const types = app.graph.nodes.map((n) => n.type);
      const { output } = await app.graphToPrompt();
      return {
        types,
        missing: types.filter((t) => !LiteGraph.registered_node_types[t]),
        dialogs: [...document.querySelectorAll("[role=dialog]")].map((d) => d.innerText.slice(0, 500)),
        prompt: output,
      };
    });
    result.workflows[name].geometry = await geometry();
    await page.screenshot({ path: shot(`workflow-${name}`) });
    // Close what opened with it (a missing-nodes dialog), so the next step starts clean.
    for (let i = 0; i < 3 && await page.getByRole("dialog").count(); i++) await page.keyboard.press("Escape");
  }

  // Engine events as nodes/accelerate.py sends them (a real build takes minutes): the build toast
  // follows the progress bar, then says ready; a fallback badges the node in warning colour.
  // Events for no node, an unknown node, or with missing fields must not throw.
  phase = "events";
  result.events = await page.evaluate(async () => {
    const { api } = await import("/scripts/api.js");
    const node = app.graph.nodes.find((n) => /KSampler$/.test(n.type));
    const toasts = () => [...document.querySelectorAll(".p-toast-message")].map((t) => t.innerText.replace(/\s+/g, " "));
    const frame = () => new Promise((r) => setTimeout(r, 1200));   // toasts leave with a transition
    const send = async (type, detail) => { api.dispatchCustomEvent(type, detail); await frame(); };
    const out = {};
    await send("sprint.sampler", {});
    await send("sprint.prompt_cache", { node: "99999", prompt_id: "t" });
    await send("sprint.engine", { node: String(node.id), prompt_id: "t", status: "building", backend: "onnxruntime", precision: "fp32" });
    await send("progress", { node: String(node.id), prompt_id: "t", value: 1, max: 4 });
    out.building = toasts();
    await send("sprint.engine", { node: String(node.id), prompt_id: "t", status: "ready", backend: "onnxruntime", precision: "fp32", bytes: 3 << 20 });
    out.ready = toasts();
    await send("sprint.engine", { node: String(node.id), prompt_id: "t", fallback: "the image is larger than the engine's profile" });
    out.badge = node.sprintBadge?.text ?? null;
    out.colors = node.sprintBadge ? Object.values(node.sprintBadge.lines).map(([, c]) => c) : [];
    // A Sprint node's text output (ui.PreviewText), which this frontend draws nowhere, becomes badge
    // lines; the sampler's is left out (its event line carries the same numbers).
    const other = app.graph.nodes.find((n) => n.type.startsWith("Sprint") && n.type !== "SprintKSampler");
    const report = "hits 1 memory + 0 disk, misses 2, bypassed 0 | memory 3 entries, 0.1/256 MB";
    await send("executed", { node: String(other.id), prompt_id: "t2", output: { text: [report] } });
    await send("executed", { node: String(node.id), prompt_id: "t3", output: { text: ["7 of 7 model calls"] } });
    out.report = { sent: report, badge: other.sprintBadge?.text ?? null, sampler: node.sprintBadge?.text ?? null };
    return out;
  });
  await page.screenshot({ path: shot("engine-events") });

  // Each workflow as opened from Templates, its checkpoint and light decoder as shipped (the
  // server has files of those names), only made small: image size and a step cap. A fresh seed
  // and prompt text, so nothing comes from the executor's cache of an earlier run.
  result.runs = {};
  for (const run of config.runs ?? []) {
    phase = `run:${run.workflow}`;
    await openTemplate(run.workflow);
    result.runs[run.workflow] = await page.evaluate(async ({ size, max_steps, timeout_ms }) => {
      const { api } = await import("/scripts/api.js");
      const nodes = app.graph.nodes;
      const widget = (node, name) => node.widgets?.find((x) => x.name === name);
      const stamp = `run ${Date.now()}`;
      for (const n of nodes) {
        if (n.type === "SprintCachedTextEncode") widget(n, "text").value += ` (${stamp})`;
        if (widget(n, "seed")) widget(n, "seed").value = Date.now() % 1000000;
        if (["EmptyLatentImage", "EmptySD3LatentImage"].includes(n.type)) { widget(n, "width").value = size; widget(n, "height").value = size; }
        if (widget(n, "steps")) widget(n, "steps").value = Math.min(widget(n, "steps").value, max_steps);
      }
      const sampler = nodes.find((n) => n.type === "SprintKSampler");
      const seen = { sampler: null, report: null };
      const onSampler = ({ detail }) => { if (String(detail?.node) === String(sampler.id)) seen.sampler = detail; };
      const onExecuted = ({ detail }) => { if (String(detail?.node) === String(sampler.id)) seen.report = detail.output?.text?.[0] ?? null; };
      api.addEventListener("sprint.sampler", onSampler);
      api.addEventListener("executed", onExecuted);
      const done = new Promise((resolve) => {
        api.addEventListener("execution_success", (e) => resolve({ ok: true, detail: e.detail }));
        api.addEventListener("execution_error", (e) => resolve({ ok: false, detail: e.detail }));
        setTimeout(() => resolve({ ok: false, detail: "timed out" }), timeout_ms);
      });
      // queuePrompt's return value is not a reliable "accepted" in frontend 1.27 (it can be false for an
      // accepted prompt while another is being queued): refusal is what the server reports as node errors.
      await app.queuePrompt(0, 1);
      const errors = app.lastNodeErrors && Object.keys(app.lastNodeErrors).length ? app.lastNodeErrors : null;
      const outcome = errors ? { ok: false, detail: `refused by the server: ${JSON.stringify(errors)}` } : await done;
      api.removeEventListener("sprint.sampler", onSampler);
      api.removeEventListener("executed", onExecuted);
      // Draw, and read the canvas where the sampler's badge says it was drawn.
      app.canvas.setDirty(true, true);
      app.canvas.draw(true, true);
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const badge = sampler.sprintBadge;
      let pixel = null;
      if (badge?.drawn) {
        const { offset, scale } = app.canvas.ds;
        const el = app.canvas.canvas;
        const ratio = el.width / el.clientWidth;
        const x = (sampler.pos[0] + badge.drawn[0] + 3 + offset[0]) * scale * ratio;
        const y = (sampler.pos[1] + badge.drawn[1] + 7 + offset[1]) * scale * ratio;
        pixel = [...el.getContext("2d").getImageData(Math.round(x), Math.round(y), 1, 1).data];
      }
      const badges = {};
      for (const n of nodes) if (n.sprintBadge) badges[`${n.id} ${n.type}`] = n.sprintBadge.text;
      return { outcome, sampler: { id: sampler.id, badge: badge?.text ?? null, event: seen.sampler, report: seen.report,
                                   colors: badge ? Object.values(badge.lines).map(([, c]) => c) : [] },
               pixel, badges };
    }, run);
    result.runs[run.workflow].geometry = await geometry();
    await page.waitForTimeout(500);
    await page.screenshot({ path: shot(`run-${run.workflow}`) });
  }
} finally {
  fs.writeFileSync(config.result, JSON.stringify(result, null, 1));
  await browser.close();
}
