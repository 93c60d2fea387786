// Compiled (not run) by `npm test`: the public API as an app written in strict TypeScript uses it,
// through the package's own `exports` (the built dist/*.d.ts), with the `ws` package in Node.
import WebSocket from "ws";
import {
  RoomcastClient,
  RoomcastError,
  DEFAULT_CLOSE_ACTIONS,
  type Message,
  type SendResult,
  type StateChange,
  type ConnectionState,
  type RoomState,
  type ReloadInfo,
  type LostEvent,
  type Position,
} from "roomcast";

async function main(): Promise<void> {
  const client = new RoomcastClient({
    dispatchUrl: "http://127.0.0.1:9090/v1/dispatch?transport=ws",
    getToken: async () => "token",
    WebSocket,
    encoding: "binary",
    backoff: { baseMs: 500, capMs: 10_000 },
    closeActions: { 4403: "stop", 4008: "reconnect" },
    autoAck: false,
  });
  client.on("state", (c: StateChange<ConnectionState>) => console.log(c.prev, "→", c.state, c.code, c.reason));
  client.on("reconnect", (e) => console.log(e.attempt, e.delayMs));
  client.on("error", (e: Error) => console.error(e));
  client.user.on("message", (m: Message) => {
    if (m.ackRequested) m.ack();
  });
  client.broadcast.on("message", (m) => console.log(m.kind, m.data));

  const room = client.room("r1");
  room.on("state", (c: StateChange<RoomState>) => console.log(c.state));
  room.on("message", (m) => console.log(m.seq, m.kind, m.data, m.merged, m.final, m.from, m.replayed));
  room.on("stats", ({ online, users }) => console.log(online, users));
  room.on("reload", (r: ReloadInfo) => console.log(r.reason, r.epoch, r.lastSeq));
  room.on("lost", (l: LostEvent) => console.log(l.from, l.to, l.count));

  await client.connect();
  const saved: Position | undefined = room.position;
  const joined = await room.join(saved ? { since: saved } : {});
  console.log(joined.epoch, joined.lastSeq, joined.recovered);
  try {
    const r: SendResult = await room.send("chat", { text: "666" });
    if (r.broadcast) console.log(r.msgSeq);
  } catch (e) {
    if (e instanceof RoomcastError) console.log(e.code, e.retryAfterMs, e.platformCode, e.local);
  }
  const page = await room.history(0, 50);
  console.log(page.complete, page.messages.length);
  console.log(DEFAULT_CLOSE_ACTIONS[4001]);
  await room.leave();
  client.close();
}
void main;

// Browser-style: the global WebSocket satisfies the option's type too.
const browserClient = new RoomcastClient({ url: "wss://edge.example.com/ws", getToken: () => "t", WebSocket: globalThis.WebSocket });
void browserClient;
