// The console's one WebSocket to `/v1/ws` (docs/websocket.md): authenticates with its first
// frame (never a token in the URL), answers `auth.refresh_required` with a fresh token,
// resubscribes after a reconnect, and hands each event to the page's listeners.

import { current, refresh, onSession } from "./api.js";

let socket = null;
let nextId = 1;
let backoff = 500;
let closedByUs = false;
const channels = new Map(); // channel -> Set(fn)
const pending = new Map();
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
    for (const channel of channels.keys()) send({ op: "subscribe", channel });
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
      for (const fn of channels.get(frame.channel) || []) fn(frame.event, frame.channel);
    } else if (frame.op === "auth.refresh_required") {
      refresh()
        .then(() => send({ op: "auth", token: current()?.access_token }))
        .catch(() => {});
    }
  };
  ws.onclose = () => {
    socket = null;
    pending.clear();
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

/** Calls `fn(event)` for each event on `channel` until the returned function is called. */
export function subscribe(channel, fn) {
  let set = channels.get(channel);
  if (!set) {
    set = new Set();
    channels.set(channel, set);
    if (state === "live") send({ op: "subscribe", channel });
  }
  set.add(fn);
  connect();
  return () => {
    set.delete(fn);
    if (set.size === 0) {
      channels.delete(channel);
      if (state === "live") send({ op: "unsubscribe", channel });
    }
  };
}

onSession((s) => {
  if (!s) disconnect();
  else if (!socket) connect();
});
