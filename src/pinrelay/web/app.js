/*
 * pinrelay web messenger: a device in a browser (issue 13).
 *
 * It speaks the link protocol of docs/PROTOCOL.md over a WebSocket and the contacts
 * routes over HTTP with the device's token.  What it must get right:
 *
 * 1. Nothing shown twice: a message is handled once, by cursor (the cursor is kept
 *    in localStorage and given in hello) and by id; a redelivered one is acked
 *    again and skipped.
 * 2. Nothing lost: a message is stored (localStorage) before it is acked; a send
 *    not answered when the link drops goes again on the next link with the same
 *    client_id, which the relay stores once.
 * 3. A dead link is noticed and comes back (link.js): ``ping`` frames, back-off with
 *    full jitter, drain and retry_after_ms honoured, link URLs rotated.
 * 4. Receipts: opening a conversation sends ``read`` for what it shows; outgoing
 *    messages move sending -> sent (✓) -> delivered (D) -> read (R), never back;
 *    refused ones show ✗.  A group message shows D and R at the first member's
 *    receipt and counts the members' receipts (each comes once); one member's
 *    ``failed`` is counted, not shown as ✗ for the whole message.
 * 5. Conversations are keyed by the peer's PIN or, for a group's messages (``data.
 *    group``), by the group id: a group message is never shown as a one-to-one one.
 *
 * ES modules (dom.js, link.js, contacts.js, groups.js, notices.js) with no framework, no build step and no
 * inline script (the page's CSP forbids it).
 */
import { PIN_RE, contactScreens } from "./contacts.js";
import { $, el, focusKey, restoreFocus, time } from "./dom.js";
import { groupScreens } from "./groups.js";
import { Link } from "./link.js";
import { NOTICES, NOTICE_KINDS, noticeScreens, noticeText } from "./notices.js";

const STORE_KEY = "pinrelay.messenger.v1";
const RANK = { sending: 0, sent: 1, delivered: 2, read: 3, failed: 4, unsent: 4 };
const GLYPH = { sending: "…", sent: "✓", delivered: "D", read: "R", failed: "✗", unsent: "✗" };
const LABEL = {
  sending: "sending", sent: "sent", delivered: "delivered", read: "read",
  failed: "failed", unsent: "not sent",
};
// Retrying cannot help after these (PROTOCOL "Errors").
const FATAL = new Set([400, 401, 403, 404, 422]);
const KEEP = 500; // messages kept per conversation
const GROUP_RE = /^G[0-9A-HJKMNP-TV-Z]{12}$/; // G and 12 Crockford base32 digits

const root = $("app");
const version = root.dataset.version || "";

let state = load();
const orphanReceipts = new Map(); // id -> [[state, by], ...] that came before our "sent"
const ORPHANS_KEPT = 10000; // ids: receipts of messages this page never sent are dropped
let groupsAsked = 0; // the newest groups request: an older answer is stale

// --- state ----------------------------------------------------------------------
function parseUrls(text) {
  try {
    const urls = JSON.parse(text || "[]");
    return Array.isArray(urls) ? urls.filter((u) => typeof u === "string") : [];
  } catch (e) {
    return [];
  }
}

function fresh(pin, token) {
  return {
    pin, token, cursor: 0, convs: {}, contacts: {}, groups: {}, reads: [], dismissed: [], open: null,
    readsOut: {}, readSeq: 0, // reads sent and not yet confirmed by read_done, by client_id
  };
}

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (s && typeof s.pin === "string" && typeof s.token === "string") {
      return Object.assign(fresh(s.pin, s.token), s, { open: null });
    }
  } catch (e) {
    /* unreadable: start again */
  }
  return null;
}

function save() {
  if (!state) return true;
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(state));
    return true;
  } catch (e) {
    // Full (the quota): nothing more may be acked, or it would be lost (rule 2).
    setStatus("This browser's storage for the page is full: unlink to start again, or free some.", "bad");
    return false;
  }
}

function conv(peer) {
  if (!state.convs[peer]) state.convs[peer] = [];
  return state.convs[peer];
}

function trim(list) {
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
}

function findOut(test) {
  for (const list of Object.values(state.convs)) {
    for (const m of list) if (m.dir === "out" && test(m)) return m;
  }
  return null;
}

function move(m, to) {
  if (!(to in RANK) || RANK[to] <= RANK[m.state]) return false;
  m.state = to;
  return true;
}

function newClientId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function isGroup(peer) {
  return GROUP_RE.test(peer);
}

function groupName(id) {
  const g = state.groups[id];
  return g && g.name ? g.name : id;
}

function unread(peer) {
  return (state.convs[peer] || []).filter((m) => m.dir === "in" && !m.read).length;
}

// --- status line ------------------------------------------------------------------
function setStatus(text, tone) {
  const line = $("status");
  line.textContent = text;
  line.className = "status" + (tone ? " " + tone : "");
}

function announce(text) {
  $("announce").textContent = text;
}

// --- the link ---------------------------------------------------------------------
const link = new Link({
  urls: parseUrls(root.dataset.linkUrls),
  hello: () => ({
    type: "hello", pin: state.pin, token: state.token, cursor: state.cursor,
    window: 64, client: "pinrelay-web/" + version,
  }),
  onFrame,
  onStatus: setStatus,
});

const contacts = contactScreens({
  state: () => state, api, setStatus, refreshContacts, linked: () => link.linked,
});
const notices = noticeScreens({ state: () => state, save, announce });
const groups = groupScreens({
  state: () => state, api, setStatus, announce, refreshGroups, open: openConversation,
  render, save, groupName,
});

// Frames of the open session only (PROTOCOL "OPEN"): none before welcome.
function wsSend(frame) {
  if (link.linked) link.send(frame);
}

function onFrame(f) {
  switch (f.type) {
    case "welcome": return onWelcome(f);
    case "msg": return onMsg(f);
    case "sent": return onSent(f);
    case "unsent": return onUnsent(f);
    case "read_done": return onReadDone(f);
    case "error": return onError(f);
    default:
      return; // PROTOCOL "Evolution": ignore frame types we do not know
  }
}

function onWelcome(f) {
  notices.welcome();
  if (f.cursor > state.cursor) state.cursor = f.cursor; // done elsewhere
  save();
  setStatus(`Linked to ${f.node} (${f.region})`, "ok");
  // Rule 2: sends not answered on the last link go again, in order, same client_id.
  const waiting = [];
  for (const list of Object.values(state.convs)) {
    for (const m of list) if (m.dir === "out" && m.state === "sending") waiting.push(m);
  }
  waiting.sort((a, b) => a.seq - b.seq);
  for (const m of waiting) wsSend({ type: "send", to: m.to, text: m.text, client_id: m.client_id });
  // Reads the last link did not confirm go again (the relay sends one receipt each).
  const out = Object.values(state.readsOut).flat();
  state.readsOut = {};
  state.reads.unshift(...out);
  flushReads();
  refreshContacts();
  refreshGroups();
}

function onMsg(f) {
  if (f.kind === "system" && f.cursor === null) return notices.system(f); // never acked
  if (typeof f.cursor !== "number") return;
  if (f.cursor <= state.cursor) {
    wsSend({ type: "ack", cursor: f.cursor }); // a redelivery: done already
    return;
  }
  const data = f.data && typeof f.data === "object" ? f.data : {};
  let readNow = false;
  let peer = null;
  if (f.kind === "chat" && typeof f.from === "string") {
    // Rule 5: a group's message belongs to the group's conversation.
    const group = typeof data.group === "string" && isGroup(data.group) ? data.group : null;
    peer = group || f.from;
    if (group && !state.groups[group]) {
      state.groups[group] = { name: null };
      refreshGroups();
    }
    const list = conv(peer);
    if (!list.some((m) => m.id === f.id)) {
      list.push({ dir: "in", id: f.id, from: f.from, text: String(data.text ?? ""), at: f.sent_at, read: false });
      trim(list);
      readNow = peer === state.open && document.visibilityState === "visible";
      if (!readNow) announce(`New message from ${f.from}` + (group ? ` in ${groupName(group)}` : ""));
    }
  } else if (Object.hasOwn(NOTICE_KINDS, f.kind)) {
    peer = NOTICES;
    const list = conv(peer);
    if (!list.some((m) => m.id === f.id)) {
      const text = noticeText(f.kind, f.data);
      list.push({ dir: "in", id: f.id, from: NOTICE_KINDS[f.kind], text, at: f.sent_at, read: false });
      trim(list);
      readNow = peer === state.open && document.visibilityState === "visible";
      if (!readNow) announce(`New notification: ${text}`);
    }
  } else if (f.kind === "receipt") {
    receipt(String(data.id), String(data.state), f.from);
  } else if (f.kind === "contact" && typeof f.from === "string") {
    contactNotice(f.from, data);
  }
  const before = state.cursor;
  state.cursor = f.cursor;
  if (!save()) { // Rule 2: stored before it is acked, or not acked
    state.cursor = before;
    render();
    return;
  }
  wsSend({ type: "ack", cursor: f.cursor });
  if (readNow) markRead(peer);
  render();
}

function contactNotice(from, data) {
  if (data.event === "group_added" && typeof data.group === "string" && isGroup(data.group)) {
    state.groups[data.group] = { name: typeof data.name === "string" ? data.name : null };
    announce(`${from} added you to the group ${groupName(data.group)}`);
    refreshGroups();
  } else if (data.event === "accepted" || data.event === "invited") {
    announce(`${from} ${data.event === "accepted" ? "accepted your invitation" : "invited you"}`);
    refreshContacts();
  }
}

function receipt(id, to, by) {
  const m = findOut((o) => o.id === id);
  if (m && isGroup(m.to)) {
    // Counts, not a map per member: a 1,000-member group stays small in storage.
    if (!(to in RANK) || to === "unsent") return;
    m.counts = m.counts || { delivered: 0, read: 0, failed: 0 };
    m.counts[to] += 1;
    if (to !== "failed") move(m, to);
  } else if (m) {
    move(m, to);
  } else if (to in RANK) {
    if (!orphanReceipts.has(id)) {
      if (orphanReceipts.size >= ORPHANS_KEPT) orphanReceipts.delete(orphanReceipts.keys().next().value);
      orphanReceipts.set(id, []);
    }
    orphanReceipts.get(id).push([to, by]);
  }
}

function onSent(f) {
  const m = findOut((o) => o.client_id === f.client_id);
  if (!m) return;
  m.id = f.id;
  move(m, "sent");
  const early = orphanReceipts.get(f.id);
  orphanReceipts.delete(f.id);
  for (const [to, by] of early || []) receipt(f.id, to, by);
  save();
  render();
}

function onUnsent(f) {
  const m = findOut((o) => o.client_id === f.client_id);
  if (!m) return;
  if (f.code === "rate_limited") {
    // Not refused for good: once more after the relay's delay.
    setTimeout(() => {
      if (link.linked && m.state === "sending") {
        wsSend({ type: "send", to: m.to, text: m.text, client_id: m.client_id });
      }
    }, f.retry_after_ms || 1000);
    return;
  }
  move(m, "unsent");
  m.reason = String(f.message || f.code);
  if (f.code === "unknown_group") refreshGroups(); // removed from it meanwhile
  if (f.code === "not_contact") refreshContacts(); // removed or blocked meanwhile
  save();
  render();
}

function onError(f) {
  if (f.code === "replaced") {
    link.halt();
    setStatus("This device was opened in another window or app.", "bad");
    $("reconnect").hidden = false;
  } else if (f.status === 401 || f.status === 404) {
    unlink("The relay no longer knows this device or its token (rotated or deleted): link again.");
  } else if (FATAL.has(f.status)) {
    link.halt();
    setStatus(`The relay refused the link: ${f.message}`, "bad");
  } else {
    link.retryAfter(f.retry_after_ms);
  }
}

// --- reading ----------------------------------------------------------------------
function markRead(peer) {
  const ids = [];
  for (const m of state.convs[peer] || []) {
    if (m.dir === "in" && !m.read) {
      m.read = true;
      ids.push(m.id);
    }
  }
  if (!ids.length) return;
  if (peer !== NOTICES) state.reads.push(...ids); // read receipts are for chat only
  save();
  flushReads();
}

function flushReads() {
  if (!link.linked) return;
  while (state.reads.length) {
    const ids = state.reads.splice(0, 256);
    const clientId = "r" + ++state.readSeq;
    state.readsOut[clientId] = ids;
    wsSend({ type: "read", ids, client_id: clientId });
  }
  save();
}

function onReadDone(f) {
  if (typeof f.client_id === "string" && Object.hasOwn(state.readsOut, f.client_id)) {
    delete state.readsOut[f.client_id];
    save();
  }
}

// --- HTTP ---------------------------------------------------------------------------
async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.detail || answer.title || `HTTP ${r.status}`);
  return answer;
}

async function refreshContacts() {
  if (!state) return;
  try {
    const answer = await api("GET", `/v1/devices/${state.pin}/contacts`);
    const contacts = {};
    for (const c of answer.contacts) contacts[c.pin] = c.state;
    state.contacts = contacts;
    save();
    render();
  } catch (e) {
    /* the relay is away: the next welcome asks again */
  }
}

async function refreshGroups() {
  if (!state) return;
  const asked = ++groupsAsked;
  try {
    const answer = await api("GET", `/v1/devices/${state.pin}/groups`);
    if (asked !== groupsAsked || !state) return; // a newer request was made since
    const groups = {};
    for (const g of answer.groups) {
      groups[g.group] = { name: g.name, creator: g.creator, members: g.members };
    }
    // A group left or lost keeps its conversation (and its name) for reading.
    for (const [id, g] of Object.entries(state.groups)) {
      if (!(id in groups) && state.convs[id]) groups[id] = { name: g.name, left: true };
    }
    state.groups = groups;
    if (isGroup(state.open) && !(state.open in groups)) state.open = null; // left, no history
    save();
    render();
  } catch (e) {
    /* the relay is away: the next welcome asks again */
  }
}

// --- rendering ----------------------------------------------------------------------
function peers() {
  const all = new Set(Object.keys(state.convs));
  for (const [pin, s] of Object.entries(state.contacts)) if (s === "accepted") all.add(pin);
  for (const id of Object.keys(state.groups)) all.add(id);
  const last = (p) => {
    const list = state.convs[p] || [];
    return list.length ? list[list.length - 1].at : "";
  };
  return [...all].sort((a, b) => (last(b) > last(a) ? 1 : last(b) < last(a) ? -1 : a < b ? -1 : 1));
}

function render() {
  if (!state) return;
  const keep = focusKey();
  $("me").textContent = `Device ${state.pin}`;
  contacts.render();
  notices.render();
  renderContacts();
  renderConversation();
  groups.render();
  restoreFocus(keep);
}

function renderContacts() {
  const list = $("contacts");
  list.replaceChildren();
  for (const pin of peers()) {
    const n = unread(pin);
    const badge = n
      ? el("span", { className: "badge", "data-unread": String(n) }, String(n),
          el("span", { className: "sr-only", text: " unread" }))
      : null;
    const group = isGroup(pin);
    const who = pin === NOTICES
      ? el("span", { className: "who group", text: "Notifications" })
      : group
        ? el("span", { className: "who group" }, el("span", { className: "tag", text: "group" }), " " + groupName(pin))
        : el("span", { className: "who", text: pin });
    const key = pin === NOTICES ? "data-notices" : group ? "data-group" : "data-pin";
    list.append(el("li", {},
      el("button", {
        type: "button", className: "contact", "data-peer": pin, [key]: pin,
        "data-focus": "contact " + pin, "aria-current": pin === state.open ? "true" : "false",
      }, who, badge)));
  }
  $("no-contacts").hidden = list.children.length > 0;
}

function renderConversation() {
  const peer = state.open;
  $("messenger").classList.toggle("reading", Boolean(peer));
  const left = Boolean(peer && state.groups[peer] && state.groups[peer].left);
  $("composer").hidden = !peer || left || peer === NOTICES;
  $("conversation-title").textContent = !peer
    ? "Choose a conversation"
    : peer === NOTICES ? "Notifications"
      : isGroup(peer) ? `Group ${groupName(peer)}` : `Conversation with ${peer}`;
  const box = $("messages");
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.replaceChildren();
  for (const m of peer ? state.convs[peer] || [] : []) {
    const meta = el("p", { className: "meta" }, el("time", { dateTime: m.at, text: time(m.at) }));
    const from = m.dir === "in" && (isGroup(peer) || peer === NOTICES)
      ? el("p", { className: "from", text: m.from }) : null;
    const item = el("li", { className: "msg " + m.dir }, from, el("p", { className: "text", text: m.text }), meta);
    if (m.dir === "out" && m.counts) {
      const c = m.counts;
      const failed = c.failed ? `, failed for ${c.failed}` : "";
      meta.append(el("span", { className: "counts", text: `delivered to ${c.delivered}, read by ${c.read}${failed}` }));
    }
    if (m.dir === "out") {
      item.dataset.clientId = m.client_id;
      meta.append(el("span", {
        className: "state", role: "img", "aria-label": LABEL[m.state],
        "data-state": m.state, title: LABEL[m.state], text: GLYPH[m.state],
      }));
      if (m.reason) item.append(el("p", { className: "reason", text: "Not sent: " + m.reason }));
    }
    if (m.id) item.dataset.id = m.id;
    box.append(item);
  }
  if (atEnd) box.scrollTop = box.scrollHeight;
}

// --- screens ---------------------------------------------------------------------------
function showMessenger() {
  $("login").hidden = true;
  $("messenger").hidden = false;
  $("me").hidden = false;
  $("unlink").hidden = false;
  render();
}

function showLogin(message) {
  $("messenger").hidden = true;
  $("me").hidden = true;
  $("unlink").hidden = true;
  $("reconnect").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("Not linked");
}

function start(pin, token, urls) {
  if (urls && urls.length) link.urls = urls;
  if (state && state.pin === pin) state.token = token; // same device: keep its history
  else state = fresh(pin, token);
  save();
  showMessenger();
  link.start();
  refreshContacts();
  refreshGroups();
}

function unlink(message) {
  link.stop();
  localStorage.removeItem(STORE_KEY);
  state = null;
  notices.welcome(); // no device, no banners
  showLogin(message);
}

function openConversation(peer) {
  state.open = peer;
  markRead(peer);
  render();
  $("compose-text").focus();
}

// --- events ------------------------------------------------------------------------------
$("pair-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-error").textContent = "";
  try {
    const r = await fetch("/v1/pairing", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code: $("pair-code").value }),
    });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(answer.detail || `HTTP ${r.status}`);
    $("pair-code").value = "";
    start(answer.pin, answer.token, answer.link_urls);
  } catch (err) {
    $("login-error").textContent = "Could not link: " + err.message;
  }
});

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-error").textContent = "";
  const pin = $("login-pin").value.trim().toUpperCase();
  const token = $("login-token").value.trim();
  if (!PIN_RE.test(pin)) {
    $("login-error").textContent = "A PIN is 8 hexadecimal digits, e.g. 2A0B6EE0.";
    return;
  }
  try {
    const r = await fetch(`/v1/devices/${pin}/contacts`, {
      cache: "no-store", headers: { Authorization: "Bearer " + token },
    });
    if (r.status === 401) throw new Error("unknown PIN or wrong token");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    $("login-token").value = "";
    start(pin, token);
  } catch (err) {
    $("login-error").textContent = "Could not link: " + err.message;
  }
});

$("contacts").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-peer]");
  if (button) openConversation(button.dataset.peer);
});

$("back").addEventListener("click", () => {
  const peer = state.open;
  state.open = null;
  render();
  const again = document.querySelector(`[data-focus="${CSS.escape("contact " + peer)}"]`);
  if (again) again.focus();
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const box = $("compose-text");
  const text = box.value;
  if (!text.trim() || !state.open) return;
  const m = {
    dir: "out", client_id: newClientId(), to: state.open, text,
    at: new Date().toISOString(), state: "sending", id: null, seq: (state.seq = (state.seq || 0) + 1),
  };
  const list = conv(state.open);
  list.push(m);
  trim(list);
  if (!save()) { // kept before it goes out (a reload sends it again), or not sent
    list.pop();
    return;
  }
  wsSend({ type: "send", to: m.to, text: m.text, client_id: m.client_id });
  box.value = "";
  render();
});

$("compose-text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

$("unlink").addEventListener("click", () => unlink("Unlinked: this browser forgot the device's token and its conversations."));

$("reconnect").addEventListener("click", () => {
  $("reconnect").hidden = true;
  link.resume();
});

document.addEventListener("visibilitychange", () => {
  if (!state || document.visibilityState !== "visible") return;
  if (state.open) {
    markRead(state.open);
    render();
  }
  link.wake();
});
window.addEventListener("online", () => link.wake());

// --- start -------------------------------------------------------------------------------
if (state) {
  showMessenger();
  link.start();
} else {
  showLogin();
}
