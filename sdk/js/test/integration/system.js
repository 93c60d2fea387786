// Runs the real roomcast-control (control plane + embedded edge) on free loopback ports for the
// integration tests, and a TCP proxy between client and edge that can cut or stall connections.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const API_KEY = "test-key";

/** The binary: $ROOMCAST_CONTROL_BIN, else the workspace's release build. Missing → a clear failure. */
export function controlBin() {
  const bin = process.env.ROOMCAST_CONTROL_BIN || path.resolve(here, "../../../../target/release/roomcast-control");
  if (!existsSync(bin)) {
    throw new Error(
      `roomcast-control not found at ${bin}. Build it first: (cd ${path.resolve(here, "../../../..")} && cargo build --release -p roomcast-control), ` +
        "or set ROOMCAST_CONTROL_BIN to the binary.",
    );
  }
  return bin;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `fn()` is truthy (polling), or fails with `what`. */
export async function until(fn, what, timeoutMs = 10_000, everyMs = 20) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export class System {
  constructor({ args = [], env = {} } = {}) {
    this.bin = controlBin();
    this.extraArgs = args;
    this.env = env;
    this.log = [];
  }

  async start() {
    if (!this.ports) {
      this.ports = { api: await freePort(), link: await freePort(), ws: await freePort(), tcp: await freePort(), admin: await freePort() };
    }
    const p = this.ports;
    const args = [
      "--api-listen", `127.0.0.1:${p.api}`,
      "--link-listen", `127.0.0.1:${p.link}`,
      "--edge-ws-listen", `127.0.0.1:${p.ws}`,
      "--edge-tcp-listen", `127.0.0.1:${p.tcp}`,
      "--edge-admin-listen", `127.0.0.1:${p.admin}`,
      "--api-key", API_KEY,
      "--edge-workers", "1",
      "--startup-grace-ms", "0",
      ...this.extraArgs,
    ];
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...this.env };
    this.proc = spawn(this.bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (b) => {
      this.log.push(b.toString());
      if (this.log.length > 200) this.log.shift();
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    const proc = this.proc;
    this.exited = new Promise((r) => proc.on("exit", r));
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`roomcast-control exited (${proc.exitCode}):\n${this.log.join("")}`);
      try {
        const r = await fetch(`${this.api}/readyz`);
        return r.ok;
      } catch {
        return false;
      }
    }, "roomcast-control /readyz", 20_000, 25);
    return this;
  }

  get api() {
    return `http://127.0.0.1:${this.ports.api}`;
  }
  get wsUrl() {
    return `ws://127.0.0.1:${this.ports.ws}/ws`;
  }
  get dispatchUrl() {
    return `${this.api}/v1/dispatch?transport=ws`;
  }

  /** SIGKILL, waiting for the exit. */
  async kill() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 3000);
    await this.exited;
    clearTimeout(t);
  }

  async call(method, p, body) {
    const r = await fetch(this.api + p, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${p} → ${r.status} ${text}`);
    return JSON.parse(text);
  }

  async token(user, ttl_s = 600, extra = {}) {
    return (await this.call("POST", "/v1/tokens", { user, ttl_s, ...extra })).token;
  }
  publish(room, data, extra = {}) {
    return this.call("POST", `/v1/rooms/${room}/messages`, { priority: 2, kind: "chat", data, ...extra });
  }
  publishMany(messages) {
    return this.call("POST", "/v1/messages", { messages });
  }
  publishUser(user, data, extra = {}) {
    return this.call("POST", `/v1/users/${user}/messages`, { priority: 1, kind: "notice", data, ...extra });
  }
  receipt(user, seq) {
    return this.call("GET", `/v1/users/${user}/messages/${seq}`);
  }
}

/** A TCP proxy to `port` on loopback: `dropAll()` cuts every connection, `pause()` stalls reading from the edge. */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.paused = false;
    this.accepted = 0;
  }
  async start() {
    this.server = net.createServer((client) => {
      this.accepted++;
      const upstream = net.connect(this.targetPort, "127.0.0.1");
      const pair = { client, upstream };
      this.pairs.add(pair);
      client.pipe(upstream);
      upstream.pipe(client);
      if (this.paused) upstream.pause();
      const end = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
    });
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }
  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  /** Resets every proxied connection (the client sees an abnormal close, 1006). */
  dropAll() {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy?.() ?? client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }
  /** Stops reading from the edge: the client looks like a reader that stopped. */
  pause() {
    this.paused = true;
    for (const { upstream } of this.pairs) {
      upstream.unpipe();
      upstream.pause();
    }
  }
  resume() {
    this.paused = false;
    for (const { client, upstream } of this.pairs) {
      upstream.pipe(client);
      upstream.resume();
    }
  }
  async stop() {
    this.dropAll();
    await new Promise((r) => this.server.close(r));
  }
}
