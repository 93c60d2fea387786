// The live-room page: everything on it comes from roomcast through the SDK (sdk/js).
//
// Served by roomcast-control in development mode at /demo/ (the SDK build at /demo/sdk/, the
// demo token endpoint at /demo/token, the dispatcher at /v1/dispatch, all on one origin).
// `?room=` picks the room (default `demo`), `?user=` the viewer's id, `?encoding=binary` the
// binary protocol.

import { RoomcastClient } from "./sdk/index.js";

const params = new URLSearchParams(location.search);
const roomId = params.get("room") || "demo";
const encoding = params.get("encoding") === "binary" ? "binary" : "json";
let userId = params.get("user") || sessionStorage.getItem("roomcast-demo-user") || "";

const $ = (id) => document.getElementById(id);
$("room-name").textContent = roomId;

// ---- the connection --------------------------------------------------------------------------

/** A token for this viewer from the demo endpoint (a real app asks its own backend). */
async function getToken() {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(userId ? { user: userId } : {}),
  });
  if (!response.ok) throw new Error(`demo token: HTTP ${response.status}`);
  const { user, token } = await response.json();
  userId = user;
  sessionStorage.setItem("roomcast-demo-user", user);
  $("status-user").textContent = `you are ${user}`;
  return token;
}

const client = new RoomcastClient({ dispatchUrl: "/v1/dispatch", getToken, encoding });
const room = client.room(roomId);

// ---- the status line: connected / reconnecting / recovered ---------------------------------

let everConnected = false;
/** After a reconnect: the room was rejoined, and this many missed messages were replayed. */
let recovering = false;
let replayed = 0;

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

function showRecovered() {
  setStatus("connected", replayed > 0 ? `reconnected · recovered ${replayed} missed` : "reconnected · recovered");
  $("status").dataset.recovered = String(replayed);
}

client.on("state", ({ state, code }) => {
  if (state === "connected") {
    setStatus("connected", everConnected ? "reconnected" : "connected");
    everConnected = true;
  } else if (state === "connecting") {
    setStatus(everConnected ? "reconnecting" : "connecting", everConnected ? "reconnecting…" : "connecting…");
  } else {
    setStatus("disconnected", code ? `disconnected (${code})` : "disconnected");
  }
});

client.on("reconnect", ({ delayMs }) => {
  setStatus("reconnecting", `reconnecting in ${(delayMs / 1000).toFixed(1)} s…`);
});

room.on("state", ({ state, prev }) => {
  if (state === "subscribing" && prev === "subscribed") {
    recovering = false;
    replayed = 0;
  }
  if (state === "subscribed" && everConnected && $("status").dataset.joined === "1") {
    recovering = true;
    showRecovered();
  }
  if (state === "subscribed") $("status").dataset.joined = "1";
});

room.on("reload", ({ reason }) => {
  // The missed messages could not be replayed (the server restarted, or they expired): a real
  // app refetches the room's state from its backend here. The demo's state lives only in the
  // stream, so it starts the counters over.
  recovering = false;
  setStatus("connected", `reconnected · reloaded (${reason})`);
  $("status").dataset.reloaded = reason;
  resetState();
});

// ---- what the room's stream shows ------------------------------------------------------------

let likes = 0;
const combos = new Map(); // `${user}:${gift}` → { total, element, timer }
const GIFT_ICONS = { rose: "🌹", rocket: "🚀", heart: "💖" };

function resetState() {
  likes = 0;
  $("likes").textContent = "0";
  $("likes").dataset.likes = "0";
  for (const combo of combos.values()) combo.element.remove();
  combos.clear();
}

room.on("message", (m) => {
  if (m.replayed && recovering) {
    replayed += 1;
    showRecovered();
  }
  switch (m.kind) {
    case "chat":
      return showChat(m);
    case "like":
      return addLikes(m);
    case "combo":
      return showCombo(m);
    case "pk":
      return showPk(m);
    case "system":
      return showNotice(m);
    default:
      return logEntry("system", "", `${m.kind}: ${JSON.stringify(m.data)}`);
  }
});

room.on("stats", ({ online, users }) => {
  $("online").textContent = String(online);
  $("online").dataset.online = String(online);
  $("online").parentElement.title = `${online} connections, ${users} viewers`;
});

room.on("lost", ({ count }) => logEntry("system", "", `(${count} messages were dropped in this busy room)`));

/** A chat line: a viewer's send carries `from`; the demo publisher's carry `data.user`. */
function showChat(m) {
  const data = m.data ?? {};
  const who = m.from ?? data.user ?? "someone";
  const text = typeof data === "string" ? data : String(data.text ?? "");
  const mine = m.from !== undefined && m.from === userId;
  flyDanmaku(who, text, mine);
  logEntry(mine ? "chat mine" : "chat", who, text, data.badge);
}

const LANES = 6;
const FLIGHT_MS = 7000;
/** Per lane, when the last line in it has moved far enough for the next one to start. */
const laneFreeAt = new Array(LANES).fill(0);

function flyDanmaku(who, text, mine) {
  const layer = $("danmaku");
  const line = document.createElement("div");
  line.className = mine ? "line mine" : "line";
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = `${who}:`;
  line.append(name, document.createTextNode(text));
  line.addEventListener("animationend", () => line.remove());
  // The lane that frees first: lines in a lane follow each other without overlapping.
  let lane = 0;
  for (let i = 1; i < LANES; i += 1) if (laneFreeAt[i] < laneFreeAt[lane]) lane = i;
  line.style.top = `${lane * (100 / LANES)}%`;
  layer.append(line);
  const width = line.offsetWidth;
  const speed = (window.innerWidth + width) / FLIGHT_MS; // px per ms
  const now = performance.now();
  const start = Math.max(now, laneFreeAt[lane]);
  line.style.animationDelay = `${start - now}ms`;
  laneFreeAt[lane] = start + (width + 24) / speed;
  // At most 40 lines in flight or waiting: a busy room drops the oldest first.
  while (layer.children.length > 40) layer.children[0].remove();
}

function addLikes(m) {
  likes += Number(m.data?.count ?? 1);
  $("likes").textContent = likes.toLocaleString();
  $("likes").dataset.likes = String(likes);
}

/** A gift combo: each delivered message is one merge window's sum (`merged` hits). */
function showCombo(m) {
  const { user, gift, count } = m.data ?? {};
  const key = `${user}:${gift}`;
  let combo = combos.get(key);
  if (!combo) {
    const element = document.createElement("div");
    element.className = "combo";
    element.dataset.key = key;
    $("combos").append(element);
    combo = { total: 0, element, timer: 0 };
    combos.set(key, combo);
  }
  combo.total += Number(count ?? 1);
  combo.element.dataset.total = String(combo.total);
  combo.element.innerHTML = "";
  const icon = document.createElement("span");
  icon.className = "gift";
  icon.textContent = GIFT_ICONS[gift] ?? "🎁";
  const label = document.createElement("span");
  label.textContent = `${user} sent ${gift}`;
  const total = document.createElement("span");
  total.className = "count";
  total.textContent = `×${combo.total}`;
  combo.element.append(icon, label, total);
  clearTimeout(combo.timer);
  combo.timer = setTimeout(() => {
    combo.element.remove();
    combos.delete(key);
    logEntry("gift", user, `sent ${gift} ×${combo.total}`);
  }, 4000);
}

function showPk(m) {
  const { left = 0, right = 0, winner } = m.data ?? {};
  const pk = $("pk");
  $("pk-left").textContent = left.toLocaleString();
  $("pk-right").textContent = right.toLocaleString();
  const share = left + right > 0 ? (100 * left) / (left + right) : 50;
  $("pk-fill").style.width = `${share}%`;
  if (m.final) {
    pk.dataset.state = "final";
    const result =
      winner === "left" ? "Red wins!" : winner === "right" ? "Blue wins!" : "It's a draw";
    $("pk-result").textContent = `PK over · ${result} (${left} : ${right})`;
    $("pk-result").hidden = false;
    logEntry("system", "PK", `${result} ${left} : ${right}`);
  } else {
    pk.dataset.state = "live";
    $("pk-result").hidden = true;
  }
}

let noticeTimer = 0;

function showNotice(m) {
  const text = String(m.data?.text ?? "");
  $("notice").textContent = text;
  $("notice").hidden = false;
  $("notice").dataset.seq = String(m.seq);
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($("notice").hidden = true), 8000);
  logEntry("system", "system", text);
}

function logEntry(kind, who, text, badge) {
  const entry = document.createElement("div");
  entry.className = `entry ${kind}`;
  if (badge) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = badge;
    entry.append(b);
  }
  if (who) {
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who;
    entry.append(name);
  }
  entry.append(document.createTextNode(text));
  const log = $("chat-log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(entry);
  while (log.children.length > 200) log.children[0].remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// ---- the chat box ------------------------------------------------------------------------------

let errorTimer = 0;

function showSendError(text) {
  $("chat-error").textContent = text;
  $("chat-error").hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($("chat-error").hidden = true), 5000);
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text) return;
  try {
    const reply = await room.send("chat", { text });
    input.value = "";
    $("chat-error").hidden = true;
    if (!reply.broadcast) showSendError("Sent — the room is busy, so it was not shown to everyone.");
  } catch (error) {
    switch (error.code) {
      case "rate_limited":
      case "send_paused":
        showSendError(`Slow down — try again in ${Math.ceil((error.retryAfterMs ?? 1000) / 1000)} s.`);
        break;
      case "rejected":
        showSendError(error.message);
        break;
      case "forbidden":
        showSendError("You cannot chat in this room.");
        break;
      default:
        showSendError(`Not sent (${error.code}). Try again.`);
    }
    $("chat-error").dataset.code = error.code;
  }
});

// ---- go ------------------------------------------------------------------------------------------

window.roomcastDemo = { client, room, get user() { return userId; } };
setStatus("connecting", "connecting…");
client.connect().catch((error) => setStatus("disconnected", `stopped: ${error.code ?? error.message}`));
room.join().catch((error) => logEntry("system", "", `could not join ${roomId}: ${error.code}`));
