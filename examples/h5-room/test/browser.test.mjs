// The demo page in a real browser (Debian's chromium, headless, driven by playwright-core): the
// page as served by roomcast-control at /demo/, on the SDK's build, against the real control
// plane and a separate edge process, with messages published through the API.
//
//   - danmaku, a gift combo's merged total, the like total, the PK bar and its final result, a
//     priority-0 notice and the online count show up in the DOM;
//   - the edge is killed (SIGKILL) and started again while a P0 notice is published: the page says
//     it reconnected and recovered, and the notice is there (replayed, not lost);
//   - a chat line typed in the box comes back through the room, and sending too fast shows the
//     rate-limit message.
//
// It saves a screenshot of the page: target/h5-room.png (docs/h5-room.png with
// UPDATE_SCREENSHOT=1, the one the README shows).
//
// Binaries: $ROOMCAST_CONTROL_BIN / $ROOMCAST_EDGE_BIN, else the workspace's release builds.
// Browser: $CHROMIUM, else /usr/bin/chromium.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
const DEV_KEY = "roomcast-dev-api-key";

function binary(env, name) {
  const bin = process.env[env] || path.join(root, "target/release", name);
  if (!existsSync(bin)) {
    throw new Error(
      `${name} not found at ${bin}: build it (cargo build --release -p roomcast-control -p roomcast-engine) or set ${env}`,
    );
  }
  return bin;
}

function browserPath() {
  const bin = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(bin)) {
    throw new Error(
      `no Chromium at ${bin}: install Debian's chromium (scripts/install-test-deps.sh does, as root) or set CHROMIUM`,
    );
  }
  return bin;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A child process whose output is kept for failure messages. */
class Process {
  constructor(name, bin, args) {
    this.name = name;
    this.log = [];
    this.proc = spawn(bin, args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 100) this.log.shift();
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    this.exited = new Promise((resolve) => this.proc.on("exit", resolve));
  }

  async kill() {
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  tail() {
    return `--- ${this.name} ---\n${this.log.join("").slice(-3000)}`;
  }
}

/** The control plane in development mode (the demo needs the development key) and one edge. */
class System {
  async start() {
    this.ports = {
      api: await freePort(),
      link: await freePort(),
      ws: await freePort(),
      tcp: await freePort(),
    };
    const p = this.ports;
    this.control = new Process("control", binary("ROOMCAST_CONTROL_BIN", "roomcast-control"), [
      "--api-listen", `127.0.0.1:${p.api}`,
      "--link-listen", `127.0.0.1:${p.link}`,
      "--no-embedded-edge",
      "--startup-grace-ms", "0",
    ]);
    this.api = `http://127.0.0.1:${p.api}`;
    await this.until(async () => (await fetch(`${this.api}/healthz`).catch(() => null))?.ok, "the control plane");
    await this.startEdge();
  }

  async startEdge() {
    const p = this.ports;
    this.edge = new Process("edge", binary("ROOMCAST_EDGE_BIN", "roomcast-edge"), [
      "--control", `127.0.0.1:${p.link}`,
      "--ws-listen", `127.0.0.1:${p.ws}`,
      "--tcp-listen", `127.0.0.1:${p.tcp}`,
      "--admin-listen", "127.0.0.1:0",
      "--advertise-host", "127.0.0.1",
      "--workers", "1",
      "--edge-id", "edge-a",
    ]);
    await this.until(async () => {
      const r = await fetch(`${this.api}/v1/dispatch`).catch(() => null);
      return r?.ok;
    }, "the edge in /v1/dispatch");
  }

  async until(check, what, timeoutMs = 15_000) {
    const end = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${this.tails()}`);
      await sleep(50);
    }
  }

  async publish(room, body) {
    const r = await fetch(`${this.api}/v1/rooms/${room}/messages`, {
      method: "POST",
      headers: { authorization: `Bearer ${DEV_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await r.json();
    assert.equal(r.status, 200, JSON.stringify(answer));
    return answer;
  }

  tails() {
    return [this.control, this.edge].filter(Boolean).map((p) => p.tail()).join("\n");
  }

  async stop() {
    await this.edge?.kill();
    await this.control?.kill();
  }
}

test("the demo page shows a live room, survives an edge restart and sends chat", { timeout: 120_000 }, async (t) => {
  const system = new System();
  await system.start();
  const browser = await chromium.launch({
    executablePath: browserPath(),
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.after(async () => {
    await browser.close();
    await system.stop();
  });
  const page = await browser.newPage({ viewport: { width: 420, height: 860 } });
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  const room = "browser-room";
  await page.goto(`${system.api}/demo/?room=${room}&user=viewer-1`);
  const status = page.locator("#status");
  await page.waitForFunction(() => document.getElementById("status").dataset.joined === "1", null, {
    timeout: 15_000,
  });
  assert.equal(await status.getAttribute("data-state"), "connected");

  // ---- a live room -------------------------------------------------------------------------
  await system.publish(room, { priority: 3, kind: "chat", data: { user: "momo", text: "hello from momo" } });
  for (let i = 0; i < 5; i += 1) {
    await system.publish(room, {
      priority: 3,
      kind: "like",
      data: { count: 2 },
      merge: { key: "likes", op: "sum", fields: ["count"], interval_ms: 300 },
    });
    await system.publish(room, {
      priority: 2,
      kind: "combo",
      data: { user: "kiki", gift: "rocket", count: 1 },
      merge: { key: "combo:kiki:rocket", op: "sum", fields: ["count"], interval_ms: 300 },
    });
  }
  await system.publish(room, {
    priority: 1,
    kind: "pk",
    data: { pk: 1, left: 300, right: 100 },
    merge: { key: "pk:1", op: "latest", interval_ms: 500 },
  });
  await system.publish(room, {
    priority: 1,
    kind: "pk",
    data: { pk: 1, left: 5100, right: 4800, winner: "left" },
    merge: { key: "pk:1", op: "latest", final: true },
  });
  await system.publish(room, { priority: 0, kind: "system", data: { text: "Welcome to the room!" } });

  await page.locator("#chat-log .entry", { hasText: "hello from momo" }).waitFor({ timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("likes").dataset.likes === "10", null, { timeout: 10_000 });
  await page.waitForFunction(
    () => document.querySelector('.combo[data-key="kiki:rocket"]')?.dataset.total === "5",
    null,
    { timeout: 10_000 },
  );
  await page.waitForFunction(() => document.getElementById("pk").dataset.state === "final", null, { timeout: 10_000 });
  assert.match(await page.locator("#pk-result").textContent(), /Red wins!.*5100 : 4800/);
  assert.equal(await page.locator("#notice").textContent(), "Welcome to the room!");
  await page.waitForFunction(() => Number(document.getElementById("online").dataset.online) >= 1, null, {
    timeout: 15_000,
  });

  // ---- the edge is killed and comes back; a P0 notice published meanwhile is not lost --------
  await system.edge.kill();
  await page.waitForFunction(() => document.getElementById("status").dataset.state === "reconnecting", null, {
    timeout: 10_000,
  });
  const notice = "Maintenance at 02:00 (sent while you were away)";
  const published = await system.publish(room, { priority: 0, kind: "system", data: { text: notice } });
  await system.startEdge();
  await page.waitForFunction(
    (text) => document.getElementById("notice").textContent === text,
    notice,
    { timeout: 30_000 },
  );
  await page.waitForFunction(() => document.getElementById("status").dataset.recovered === "1", null, {
    timeout: 10_000,
  });
  assert.match(await page.locator("#status-text").textContent(), /reconnected · recovered 1 missed/);
  assert.equal(await page.locator("#notice").getAttribute("data-seq"), String(published.seq));

  // ---- chat from the page comes back through the room; too fast is refused kindly ------------
  await page.fill("#chat-input", "typed in the browser");
  await page.click("#chat-send");
  await page.locator("#chat-log .entry.mine", { hasText: "typed in the browser" }).waitFor({ timeout: 10_000 });
  await page.locator("#danmaku .line.mine", { hasText: "typed in the browser" }).waitFor({ timeout: 5_000 });
  for (let i = 0; i < 8; i += 1) {
    await page.fill("#chat-input", `spam ${i}`);
    await page.click("#chat-send");
  }
  await page.waitForFunction(() => !document.getElementById("chat-error").hidden, null, { timeout: 10_000 });
  assert.match(await page.locator("#chat-error").textContent(), /Slow down — try again in \d+ s\./);

  // ---- the screenshot the README shows ------------------------------------------------------
  await page.fill("#chat-input", "");
  for (const [user, text] of [
    ["阿杰", "666 主播好!"],
    ["momo", "this song 🔥"],
    ["kiki", "rocket incoming"],
    ["lina", "哈哈哈哈"],
    ["tom", "gg Red team"],
  ]) {
    await system.publish(room, { priority: 3, kind: "chat", data: { user, text } });
  }
  for (let i = 0; i < 3; i += 1) {
    await system.publish(room, {
      priority: 2,
      kind: "combo",
      data: { user: "lina", gift: "rose", count: 1 },
      merge: { key: "combo:lina:rose", op: "sum", fields: ["count"], interval_ms: 300 },
    });
  }
  await page.waitForFunction(() => document.querySelector('.combo[data-key="lina:rose"]')?.dataset.total === "3", null, {
    timeout: 10_000,
  });
  await system.publish(room, {
    priority: 1,
    kind: "pk",
    data: { pk: 2, left: 1200, right: 950 },
    merge: { key: "pk:2", op: "latest", interval_ms: 500 },
  });
  await page.waitForFunction(() => document.getElementById("pk").dataset.state === "live", null, { timeout: 10_000 });
  await sleep(1500); // let the danmaku fly apart
  const shot = process.env.UPDATE_SCREENSHOT
    ? path.join(root, "docs/h5-room.png")
    : path.join(root, "target/h5-room.png");
  mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);

  assert.deepEqual(consoleErrors.filter((e) => !e.includes("WebSocket")), [], "no errors on the page");
});
