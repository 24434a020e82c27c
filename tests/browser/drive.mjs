// Drives the real ComfyUI frontend in headless Chromium for tests/browser/test_browser.py:
//   node drive.mjs <config.json>   (config written by the test; the result JSON goes to config.result)
// It only records what it sees (logs, graphs, prompts, badges, screenshots); the test judges.
import fs from "node:fs";
import path from "node:path";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = await import(path.join(config.node_modules, "playwright-core", "index.mjs"));
const shot = (name) => path.join(config.artifacts, `${name}.png`);
const result = { logs: [], http_errors: [], extensions: [], workflows: {}, run: null };
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
    return out;
  });
  await page.screenshot({ path: shot("engine-events") });

  if (config.run) {
    phase = `run:${config.run.workflow}`;
    await openTemplate(config.run.workflow);
    // The fast workflow as opened above, on the test's checkpoint at a small size.
    result.run = await page.evaluate(async ({ ckpt, size, max_steps, timeout_ms }) => {
      const { api } = await import("/scripts/api.js");
      const nodes = app.graph.nodes;
      const setWidget = (node, name, value) => {
        const w = node.widgets?.find((x) => x.name === name);
        if (w) w.value = value;
      };
      // A fresh seed and prompt text, so nothing comes from the executor's cache of an earlier run.
      const run = `run ${Date.now()}`;
      for (const n of nodes) {
        if (n.type === "CheckpointLoaderSimple") setWidget(n, "ckpt_name", ckpt);
        if (n.type === "SprintCachedTextEncode") setWidget(n, "text", `${n.widgets.find((w) => w.name === "text").value} (${run})`);
        setWidget(n, "seed", Date.now() % 1000000);
        if (n.type === "EmptyLatentImage") { setWidget(n, "width", size); setWidget(n, "height", size); }
      }
      const missing = nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);
      const sampler = nodes.find((n) => /KSampler$/.test(n.type));
      if (missing.length || !sampler) {
        return { outcome: { ok: false, detail: `not queued: missing node types ${missing}, sampler ${sampler?.type}` } };
      }
      const steps = sampler.widgets.find((w) => w.name === "steps");
      steps.value = Math.min(steps.value, max_steps);
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
      // Show the sampler, draw, and read the canvas where its badge says it was drawn.
      app.canvas.centerOnNode?.(sampler);
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
      return { outcome, sampler: { id: sampler.id, type: sampler.type, badge: badge?.text ?? null,
                                   colors: badge ? Object.values(badge.lines).map(([, c]) => c) : [] },
               pixel, badges };
    }, config.run);
    await page.waitForTimeout(500);
    await page.screenshot({ path: shot(`run-${config.run.workflow}`) });
  }
} finally {
  fs.writeFileSync(config.result, JSON.stringify(result, null, 1));
  await browser.close();
}
