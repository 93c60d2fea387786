#!/usr/bin/env node
// Drives the demo room like a live platform's backend would: chat lines from other viewers,
// likes and gift combos published with `sum` merge rules, a PK battle whose bar moves under a
// `latest` rule and ends with a `final` result, and a priority-0 system notice now and then.
// Everything goes through roomcast's publish API (control/README.md "HTTP API").
//
//   node examples/h5-room/publisher.mjs [--api http://127.0.0.1:9090] [--key roomcast-dev-api-key]
//                                      [--room demo] [--seconds 0 (forever)] [--pk-seconds 60]
//
// Node 20, no dependencies.

const args = parseArgs(process.argv.slice(2), {
  api: process.env.ROOMCAST_API ?? "http://127.0.0.1:9090",
  key: process.env.ROOMCAST_API_KEY ?? "roomcast-dev-api-key",
  room: "demo",
  seconds: "0",
  "pk-seconds": "60",
});

const VIEWERS = ["小鱼", "momo", "阿杰", "kiki", "大熊", "lina", "老王", "yuki", "星星", "tom"];
const LINES = ["666", "主播好!", "this is amazing", "哈哈哈哈", "gg", "来了来了", "好听!", "上车", "2333", "wow"];
const GIFTS = [
  { gift: "rose", priority: 2 },
  { gift: "rocket", priority: 1 },
  { gift: "heart", priority: 2 },
];

let published = 0;
let failures = 0;

/** POSTs one message body to the room. */
async function publish(body) {
  const url = `${args.api}/v1/rooms/${encodeURIComponent(args.room)}/messages`;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { authorization: `Bearer ${args.key}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      failures += 1;
      const text = await response.text();
      console.error(`publish ${body.kind}: HTTP ${response.status} ${text}`);
      return;
    }
    published += 1;
  } catch (error) {
    failures += 1;
    console.error(`publish ${body.kind}: ${error.message} (is roomcast-control running at ${args.api}?)`);
  }
}

const pick = (list) => list[Math.floor(Math.random() * list.length)];

function chat() {
  return publish({
    priority: 3,
    kind: "chat",
    data: { user: pick(VIEWERS), text: pick(LINES) },
  });
}

function like() {
  return publish({
    priority: 3,
    kind: "like",
    data: { count: 1 + Math.floor(Math.random() * 3) },
    merge: { key: "likes", op: "sum", fields: ["count"], interval_ms: 1000 },
  });
}

/** A viewer's combo: the same gift again and again for a while, summed per window. */
function comboBurst() {
  const user = pick(VIEWERS);
  const { gift, priority } = pick(GIFTS);
  const hits = 5 + Math.floor(Math.random() * 20);
  for (let i = 0; i < hits; i += 1) {
    setTimeout(() => {
      publish({
        priority,
        kind: "combo",
        data: { user, gift, count: 1 },
        merge: { key: `combo:${user}:${gift}`, op: "sum", fields: ["count"], interval_ms: 500 },
      });
    }, i * 150);
  }
}

let pk = null;

function startPk() {
  pk = { id: Date.now() % 100000, left: 0, right: 0, endsAt: Date.now() + Number(args["pk-seconds"]) * 1000 };
}

async function pkTick() {
  if (pk === null) return;
  if (Date.now() >= pk.endsAt) {
    const winner = pk.left === pk.right ? "draw" : pk.left > pk.right ? "left" : "right";
    const ended = pk;
    pk = null;
    await publish({
      priority: 1,
      kind: "pk",
      data: { pk: ended.id, left: ended.left, right: ended.right, winner },
      merge: { key: `pk:${ended.id}`, op: "latest", final: true },
    });
    setTimeout(startPk, 10_000);
    return;
  }
  pk.left += Math.floor(Math.random() * 120);
  pk.right += Math.floor(Math.random() * 100);
  await publish({
    priority: 1,
    kind: "pk",
    data: { pk: pk.id, left: pk.left, right: pk.right },
    merge: { key: `pk:${pk.id}`, op: "latest", interval_ms: 1000 },
  });
}

function notice() {
  return publish({
    priority: 0,
    kind: "system",
    data: { text: "Reminder: be kind in chat. Gifts are non-refundable." },
  });
}

const timers = [
  setInterval(chat, 250),
  setInterval(like, 100),
  setInterval(comboBurst, 4000),
  setInterval(pkTick, 200),
  setInterval(notice, 30_000),
  setInterval(() => console.log(`published ${published} messages to room ${args.room} (${failures} failed)`), 10_000),
];
startPk();
notice();
console.log(`publishing to room ${args.room} through ${args.api}; Ctrl-C to stop`);

const seconds = Number(args.seconds);
if (seconds > 0) {
  setTimeout(() => {
    timers.forEach(clearInterval);
    console.log(`done: published ${published} messages (${failures} failed)`);
    process.exitCode = failures > 0 ? 1 : 0;
  }, seconds * 1000);
}

/** `--name value` pairs over `defaults`; an unknown name is an error. */
function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]?.replace(/^--/, "");
    if (!(name in defaults) || argv[i + 1] === undefined) {
      console.error(`usage: publisher.mjs ${Object.keys(defaults).map((k) => `[--${k} ${defaults[k]}]`).join(" ")}`);
      process.exit(2);
    }
    out[name] = argv[i + 1];
  }
  return out;
}
