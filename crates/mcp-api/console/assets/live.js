// The console's one WebSocket to `/v1/ws` (docs/websocket.md): authenticates with its first
// frame (never a token in the URL), answers `auth.refresh_required` with a fresh token, and hands
// each event to the page's listeners. Every channel remembers the last offset and epoch it saw:
// after a reconnect it resubscribes with `since`, so nothing is missed and nothing repeats; when
// the server no longer holds what was missed (`recovered: false`) its listeners' `lost` is
// called, for the page to reload through REST. A channel subscribed with `replay` starts from its
// first held event: the position's epoch is asked first, then the channel is subscribed again
// `since` offset 0 of it (the history, then live events).

import { current, refresh, onSession } from "./api.js";

let socket = null;
let nextId = 1;
let backoff = 500;
let closedByUs = false;
/** channel -> { listeners: Set({fn, lost, caughtUp}), replay, log (a replayed channel's events),
 * pos (last offset and epoch seen), target (the offset that ends the missed events), ready } */
const channels = new Map();
const pending = new Map();
/** channel -> the last of its subscribe and unsubscribe exchanges: one at a time per channel. */
const chains = new Map();
const statusListeners = new Set();
let state = "offline";

function setState(s) {
  state = s;
  for (const fn of statusListeners) fn(s);
}

export function onStatus(fn) {
  statusListeners.add(fn);
  fn(state);
  return () => statusListeners.delete(fn);
}

function send(frame) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return Promise.resolve(null);
  const id = nextId++;
  socket.send(JSON.stringify({ id, ...frame }));
  return new Promise((resolve) => pending.set(id, resolve));
}

/** Subscribes `entry` on the open socket: from its last position, from its start, or from now. */
async function join(channel, entry) {
  const ws = socket;
  const gone = () => socket !== ws || channels.get(channel) !== entry;
  entry.ready = false;
  let since = entry.pos;
  if (!since && entry.replay) {
    // The epoch first (events meanwhile are ignored: offset 0 replays them), then from offset 0.
    const probe = await send({ op: "subscribe", channel });
    if (gone()) return socket === ws && probe?.ok && send({ op: "unsubscribe", channel });
    if (!probe?.ok) return failed(entry, probe);
    await send({ op: "unsubscribe", channel });
    if (gone()) return;
    since = { offset: 0, epoch: probe.result.epoch };
  }
  const reply = await send(since ? { op: "subscribe", channel, since } : { op: "subscribe", channel });
  if (gone()) return socket === ws && reply?.ok && send({ op: "unsubscribe", channel });
  if (!reply?.ok) return failed(entry, reply);
  const position = { offset: reply.result.offset, epoch: reply.result.epoch };
  // Events after this reply are the missed ones (when recovered), then live ones.
  entry.ready = true;
  if (!since) {
    entry.pos = position;
    caughtUp(entry);
  } else if (reply.result.recovered === false) {
    entry.pos = position;
    entry.log = [];
    for (const l of entry.listeners) l.lost?.();
  } else {
    entry.pos = since;
    entry.target = position.offset;
    if (position.offset <= since.offset) caughtUp(entry);
  }
}

/** The missed events are all delivered: listeners waiting for the history hear so. */
function caughtUp(entry) {
  entry.target = null;
  for (const l of entry.listeners) l.caughtUp?.();
}

/** Runs `step` after the channel's earlier exchanges (a page left and opened again at once must
 * not have its new subscription undone by the old one's unsubscribe). */
function serial(channel, step) {
  const next = (chains.get(channel) || Promise.resolve()).then(step).catch(() => {});
  chains.set(channel, next);
  next.finally(() => chains.get(channel) === next && chains.delete(channel));
  return next;
}

function failed(entry, reply) {
  for (const l of entry.listeners) l.lost?.(reply?.error || null);
}

function deliver(frame) {
  const entry = channels.get(frame.channel);
  if (!entry || !entry.ready) return;
  const pos = entry.pos;
  if (pos && frame.epoch === pos.epoch && frame.offset <= pos.offset) return; // seen already
  entry.pos = { offset: frame.offset, epoch: frame.epoch };
  if (entry.replay) entry.log.push(frame.event);
  for (const l of [...entry.listeners]) l.fn(frame.event, frame.channel);
  if (entry.target != null && frame.offset >= entry.target) caughtUp(entry);
}

function connect() {
  const s = current();
  if (!s || socket) return;
  closedByUs = false;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
  const ws = new WebSocket(url);
  socket = ws;
  setState("connecting");
  ws.onopen = async () => {
    const reply = await send({ op: "auth", token: current()?.access_token });
    if (!reply || reply.error) return ws.close();
    backoff = 500;
    setState("live");
    for (const [channel, entry] of channels) serial(channel, () => join(channel, entry));
  };
  ws.onmessage = (m) => {
    let frame;
    try {
      frame = JSON.parse(m.data);
    } catch {
      return;
    }
    if (frame.id !== undefined && pending.has(frame.id)) {
      pending.get(frame.id)(frame);
      pending.delete(frame.id);
    } else if (frame.op === "event") {
      deliver(frame);
    } else if (frame.op === "auth.refresh_required") {
      refresh()
        .then(() => send({ op: "auth", token: current()?.access_token }))
        .catch(() => {});
    }
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    for (const resolve of pending.values()) resolve(null);
    pending.clear();
    for (const entry of channels.values()) entry.ready = false;
    setState("offline");
    if (!closedByUs && current()) {
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  };
}

function disconnect() {
  closedByUs = true;
  if (socket) socket.close(1000);
  socket = null;
}

/**
 * Calls `fn(event)` for each event on `channel` until the returned function is called.
 * `replay`: first every event the server still holds for the channel, then live ones.
 * `lost(error)`: events were missed and cannot be replayed (or the subscription was refused).
 * `caughtUp()`: the events missed (or, with `replay`, held) have all been delivered.
 */
export function subscribe(channel, fn, { replay = false, lost, caughtUp: done } = {}) {
  const listener = { fn, lost, caughtUp: done };
  let entry = channels.get(channel);
  if (!entry) {
    entry = { listeners: new Set(), replay, log: [], pos: null, target: null, ready: false };
    channels.set(channel, entry);
    if (state === "live") serial(channel, () => join(channel, entry));
  } else if (replay && entry.replay) {
    // A second page part on a replayed channel gets what the first has seen.
    const seen = [...entry.log];
    queueMicrotask(() => {
      if (!entry.listeners.has(listener)) return;
      seen.forEach((e) => fn(e, channel));
      if (entry.ready && entry.target == null) done?.();
    });
  }
  entry.listeners.add(listener);
  connect();
  return () => {
    entry.listeners.delete(listener);
    if (entry.listeners.size === 0 && channels.get(channel) === entry) {
      channels.delete(channel);
      if (state === "live") serial(channel, () => entry.ready && send({ op: "unsubscribe", channel }));
    }
  };
}

onSession((s) => {
  if (!s) disconnect();
  else if (!socket) connect();
});
