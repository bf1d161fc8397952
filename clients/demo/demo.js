// Atomic Guide realtime — the demo page: a chat room, an instructor dashboard and a shared
// plain-text editor, built on the public client module only (no raw WebSockets).
//
// Settings come from the URL fragment (`#context=…&token=…&session=…`): a browser never
// sends the fragment to a server, and the token is removed from the address bar once read.
// The page runs under a strict Content-Security-Policy, so every element is built with
// createElement/createElementNS and text goes in with textContent (user input is never
// parsed as HTML); the few dynamic colours and sizes are set through CSSOM (element.style),
// which the policy allows, unlike style="" attributes.
import {
  AnalyticsWebSocketClient,
  ChatWebSocketClient,
  CollaborationWebSocketClient,
} from "/client/atomic-guide.js";

const HISTORY_PAGE = 50;
/** Renew our typing indicator at most this often (the server lets it lapse after ~6 s). */
const TYPING_RENEW_MS = 2000;
/** Forget someone's typing indicator if the server's "stopped" never reaches us. */
const TYPING_STALE_MS = 8000;
/** Cursor frames: at most ~4 a second (the server limits frames per connection, and the
 * client drops a cursor frame rather than delay an edit when its pacing window is full). */
const CURSOR_GAP_MS = 250;
/** A cursor frame the client dropped (offline, or paced) is tried again after this. */
const CURSOR_RETRY_MS = 1000;
/** Scrolled this close to the top of the chat, older messages are fetched. */
const LOAD_OLDER_THRESHOLD_PX = 48;
const DEFAULT_SESSION = "demo-doc";
const LTI_CONTEXT = "https://purl.imsglobal.org/spec/lti/claim/context";
const LTI_ROLES = "https://purl.imsglobal.org/spec/lti/claim/roles";

// --- small DOM helpers --------------------------------------------------------------------

/** The element with `data-testid="<id>"` under `root`. */
function byId(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/** An element with optional class, text (always textContent) and test id. */
function el(tag, { className, text, testid } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (testid) node.dataset.testid = testid;
  node.append(...children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- people: a stable colour and initials per user ----------------------------------------

function hueFor(userId) {
  let hash = 2166136261; // FNV-1a: similar ids still get well-spread hues
  for (let i = 0; i < userId.length; i++) hash = Math.imul(hash ^ userId.charCodeAt(i), 16777619);
  return (hash >>> 0) % 360;
}

function colourFor(userId, alpha = 1) {
  return `hsl(${hueFor(userId)} 62% 42% / ${alpha})`;
}

function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words;
  return letters.map((w) => Array.from(w)[0].toUpperCase()).join("") || "?";
}

function avatar(userId, name, className = "avatar") {
  const node = el("span", { className, text: initials(name) });
  node.style.backgroundColor = colourFor(userId);
  node.setAttribute("aria-hidden", "true");
  return node;
}

/** One person in a list: avatar, name, an optional note (role) and "you". */
function personItem(userId, name, { me = false, note = "", testid = "person" } = {}) {
  const item = el("li", { className: me ? "person me" : "person", testid }, [
    avatar(userId, name),
    el("span", { className: "person-name", text: name }),
  ]);
  item.dataset.userId = userId;
  item.title = userId;
  if (note) item.append(el("span", { className: "person-note", text: note }));
  if (me) item.append(el("span", { className: "person-note you", text: "you" }));
  return item;
}

function byName([, a], [, b]) {
  return a.localeCompare(b);
}

// --- formatting -----------------------------------------------------------------------------

const wholeNumber = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimalNumber = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });

const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const formatCount = (n) => (isNumber(n) ? wholeNumber.format(n) : "–");
const formatDecimal = (n) => (isNumber(n) ? decimalNumber.format(n) : "–");
/** A 0..1 rate as a percentage. */
const formatRate = (r) => (isNumber(r) ? percent.format(r) : "–");
/** A score the server already gives in percent (0..100). */
const formatScore = (p) => (isNumber(p) ? percent.format(p / 100) : "–");

function clockTime(iso, { seconds = false } = {}) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const options = { hour: "2-digit", minute: "2-digit" };
  if (seconds) options.second = "2-digit";
  if (date.toDateString() !== new Date().toDateString()) {
    Object.assign(options, { month: "short", day: "numeric" });
  }
  return date.toLocaleString([], options);
}

// --- settings: the fragment and the token's claims ------------------------------------------

/** The JWT's claims, decoded without verification (the server verifies; we only display). */
function decodeJwt(token) {
  try {
    const part = token.split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64.padEnd(Math.ceil(base64.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

const asList = (value) => (Array.isArray(value) ? value : value == null ? [] : [value]);

/** The roles the server derives from `roles` or the LTI 1.3 roles claim (none: learner). */
function rolesOf(claims) {
  const roles = new Set(asList(claims.roles).map((r) => String(r).toLowerCase()));
  for (const uri of asList(claims[LTI_ROLES]).map(String)) {
    if (uri.endsWith("#Instructor")) roles.add("instructor");
    if (uri.endsWith("#Administrator")) roles.add("admin");
    if (uri.endsWith("#Learner")) roles.add("learner");
  }
  if (!roles.size) roles.add("learner");
  return roles;
}

function contextsOf(claims) {
  const contexts = [...asList(claims.context_id), ...asList(claims.context_ids)];
  if (claims[LTI_CONTEXT]?.id) contexts.push(claims[LTI_CONTEXT].id);
  return contexts.map(String);
}

/** Read the fragment, then drop the token from the address bar (it stays in memory only). */
function readSettings() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token") || null;
  if (token) {
    params.delete("token");
    const rest = params.toString();
    const address = location.pathname + location.search + (rest ? `#${rest}` : "");
    history.replaceState(history.state, "", address);
  }
  const claims = token ? decodeJwt(token) : null;
  const roles = claims ? rolesOf(claims) : new Set();
  const contexts = claims ? contextsOf(claims) : [];
  // A token for exactly one context needs no `context=` in the link.
  const onlyContext = contexts.length === 1 ? contexts[0] : null;
  return {
    token,
    claims,
    roles,
    contextId: params.get("context") || params.get("contextId") || onlyContext,
    sessionId: params.get("session") || DEFAULT_SESSION,
    staff: roles.has("instructor") || roles.has("admin"),
    userId: claims?.sub ?? "",
    name: claims?.name || claims?.sub || "unknown",
  };
}

// --- alerts and connection status ----------------------------------------------------------

/** Show (or replace) the alert named `key`. */
function showAlert(key, text, level = "error") {
  const box = byId("alerts");
  let item = box.querySelector(`[data-key="${key}"]`);
  if (!item) {
    item = el("div", { testid: `alert-${key}` });
    item.dataset.key = key;
    item.setAttribute("role", level === "error" ? "alert" : "status");
    box.append(item);
  }
  item.className = `alert alert-${level}`;
  item.textContent = text;
}

function clearAlert(key) {
  byId("alerts").querySelector(`[data-key="${key}"]`)?.remove();
}

const HOW_TO_GET_A_LINK =
  "`atomic-guide up` prints fresh links; or mint a token with " +
  "`atomic-guide token --sub alice --context <context>`.";

/** A sentence for a client that ended (connect() rejected, or the socket closed for good). */
function explainFailure(label, error, contextId) {
  switch (error?.code) {
    case 4401:
      return (
        `${label}: the server refused the token — it is invalid or has expired (4401). ` +
        HOW_TO_GET_A_LINK
      );
    case 4403:
      return (
        `${label}: this token does not allow context “${contextId}” on this endpoint (4403). ` +
        `Use a link minted for it: \`atomic-guide token --sub <you> --context ${contextId}\`.`
      );
    case 1009:
      return `${label}: closed after repeated oversized frames (1009).`;
    default:
      return `${label}: ${error?.message ?? String(error)}`;
  }
}

/** A word for the close codes that end a client. */
const CLOSE_WORDS = { 4401: "token refused", 4403: "forbidden", 1009: "too large" };

const STATE_TEXT = {
  idle: "not started",
  connecting: "connecting…",
  connected: "connected",
  backing_off: "reconnecting…",
  closed: "closed",
};

/** Mirror a client's `statechange` in its header pill (and on its pane, whose lists of
 * people dim while they may be stale), and explain a terminal close. */
function watchStatus(name, label, client, contextId, pane = null) {
  const item = byId(`status-${name}`);
  item.hidden = false;
  client.on("statechange", ({ state, code, reason }) => {
    item.dataset.state = state;
    if (pane) pane.dataset.state = state;
    let text = STATE_TEXT[state] ?? state;
    if (state === "backing_off" && code) text = `reconnecting… (${code})`;
    const closedBadly = state === "closed" && code !== 1000;
    if (closedBadly) text = `closed: ${CLOSE_WORDS[code] ?? "error"} (${code})`;
    item.querySelector(".status-text").textContent = text;
    const detail = code ? `, last close ${code}${reason ? ` ${reason}` : ""}` : "";
    item.title = `${label}: ${state}${detail}`;
    if (state === "connected") clearAlert(name);
    if (closedBadly) {
      const message = `closed (${code}${reason ? `: ${reason}` : ""})`;
      showAlert(name, explainFailure(label, { code, message }, contextId));
    }
  });
}

// --- chat -----------------------------------------------------------------------------------

class ChatPane {
  constructor(settings) {
    this.settings = settings;
    this.client = new ChatWebSocketClient({ contextId: settings.contextId, token: settings.token });
    this.userId = settings.userId;
    this.scroller = byId("chat-scroll");
    this.list = byId("chat-list");
    this.input = byId("composer-input");
    this.form = byId("composer");
    this.olderButton = byId("load-older");
    this.bySeq = new Map(); // seq -> <li>: dedupes live frames against history pages
    this.oldestSeq = null;
    this.hasMore = false;
    this.historyLoaded = false;
    this.loadingOlder = false;
    this.outbox = []; // our messages awaiting their ack: {li, text, seq}
    this.presence = new Map(); // userId -> username
    this.typers = new Map(); // userId -> {username, timer}
    this.typingSentAt = 0;
    this.typingOn = false;
  }

  async start() {
    const chat = this.client;
    watchStatus("chat", "Chat", chat, this.settings.contextId, byId("chat-pane"));
    chat.on("connected", (frame) => this.onConnected(frame.data));
    chat.on("message", (frame) => this.onMessage(frame.data));
    chat.on("presence", (frame) => this.setPresence(frame.data.users));
    chat.on("user_joined", (frame) => this.addPerson(frame.data));
    chat.on("user_left", (frame) => this.removePerson(frame.data));
    chat.on("typing", (frame) => this.onTyping(frame.data));
    chat.on("statechange", ({ state }) => {
      if (state === "closed") this.setComposerEnabled(false); // nothing would be sent now
    });
    this.bindComposer();
    this.bindScroll();
    await chat.connect();
  }

  onConnected(info) {
    this.userId = info.userId;
    this.setComposerEnabled(true);
    // After a reconnect the client recovers what we missed from its lastSeq; it has none
    // while no live message has arrived yet (history does not count), so then fetch the
    // newest page again: anything already shown is deduped by seq.
    if (!this.historyLoaded || this.client.lastSeq === null) this.loadLatest();
  }

  setComposerEnabled(enabled) {
    this.input.disabled = !enabled;
    this.form.querySelector("button").disabled = !enabled;
  }

  // -- messages, kept in seq order --

  async loadLatest() {
    try {
      const page = await this.client.history({ limit: HISTORY_PAGE });
      const first = !this.historyLoaded;
      if (first) this.hasMore = page.hasMore; // (a catch-up page says nothing about older ones)
      this.historyLoaded = true;
      this.addMessages(page.messages, { stick: first });
      clearAlert("chat-history");
    } catch (error) {
      showAlert("chat-history", `Could not load the chat history: ${error.message}`);
    }
    this.updateOlderButton();
  }

  async loadOlder() {
    if (this.loadingOlder || !this.hasMore || this.oldestSeq === null) return;
    this.loadingOlder = true;
    this.updateOlderButton();
    let page = null;
    try {
      page = await this.client.history({ limit: HISTORY_PAGE, beforeSeq: this.oldestSeq });
    } catch (error) {
      showAlert("chat-history", `Could not load older messages: ${error.message}`);
    }
    // The button may disappear too: one change above the view, then one scroll correction.
    this.keepingPosition(() => {
      this.loadingOlder = false;
      if (page) this.hasMore = page.hasMore;
      this.updateOlderButton();
      if (page) this.addMessages(page.messages);
    });
  }

  /** Run `change`, which adds or removes content above the view, without moving what the
   * reader sees: the distance from the bottom of the content is what stays the same. */
  keepingPosition(change) {
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    change();
    this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
  }

  onMessage(message) {
    this.clearTyper(message.author?.id);
    this.renderTyping();
    if (message.author?.id === this.userId && this.adoptOwn(message)) return;
    this.addMessages([message]);
  }

  /**
   * Add messages (any order, duplicates ignored). `stick`: scroll to the newest; otherwise
   * follow new messages only when the reader is already at the bottom.
   */
  addMessages(messages, { stick = false } = {}) {
    const follow = stick || this.nearBottom();
    for (const message of messages) this.placeMessage(message);
    if (follow) this.scrollToBottom();
    this.updateEmpty();
  }

  placeMessage(message) {
    if (typeof message?.seq !== "number") return;
    const shown = this.bySeq.get(message.seq);
    if (shown) {
      this.setTime(shown, message.timestamp); // e.g. our own, shown before its frame came
      return;
    }
    this.insertBySeq(this.renderMessage(message), message.seq);
  }

  insertBySeq(li, seq) {
    li.dataset.seq = String(seq);
    this.bySeq.set(seq, li);
    if (this.oldestSeq === null || seq < this.oldestSeq) this.oldestSeq = seq;
    // From the end, pass over unsent items and newer messages (usually none): new messages
    // land at the bottom in one step, older pages walk up to where they belong.
    let before = null;
    for (let node = this.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node.dataset.seq !== undefined && Number(node.dataset.seq) < seq) break;
      before = node;
    }
    this.list.insertBefore(li, before);
  }

  renderMessage({ content, author, timestamp }) {
    const authorId = author?.id ?? "?";
    const name = author?.name || authorId;
    const mine = authorId === this.userId;
    const li = el("li", { className: mine ? "message mine" : "message", testid: "chat-message" }, [
      avatar(authorId, name),
      el("div", { className: "message-body" }, [
        el("div", { className: "message-meta" }, [
          el("span", { className: "message-author", text: name, testid: "message-author" }),
          el("time", { className: "message-time", testid: "message-time" }),
        ]),
        el("p", { className: "message-content", text: content, testid: "message-content" }),
      ]),
    ]);
    li.dataset.author = authorId;
    this.setTime(li, timestamp);
    return li;
  }

  setTime(li, timestamp) {
    const time = li.querySelector("time");
    time.dateTime = timestamp;
    time.textContent = clockTime(timestamp);
    time.title = new Date(timestamp).toLocaleString();
  }

  // -- sending: a pending item until the ack, an error item if it is refused --

  bindComposer() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault(); // Enter in the input submits the form
      const text = this.input.value.trim();
      if (!text) return;
      this.input.value = "";
      this.stopTyping();
      this.send(text);
    });
    this.input.addEventListener("input", () => this.onComposerInput());
    this.input.addEventListener("blur", () => this.stopTyping());
  }

  async send(text) {
    const li = this.renderMessage({
      content: text,
      author: { id: this.userId, name: this.settings.name },
      timestamp: new Date().toISOString(),
    });
    li.classList.add("pending");
    li.setAttribute("aria-busy", "true");
    li.title = "sending…";
    const entry = { li, text, seq: null };
    this.outbox.push(entry);
    this.list.append(li); // unsent items stay below the stored messages
    this.scrollToBottom();
    this.updateEmpty();
    try {
      const { seq } = await this.client.sendMessage(text);
      this.confirmed(entry, seq);
    } catch (error) {
      this.failed(entry, error);
    }
  }

  /** Our own `message` frame may come before the ack: it takes over the pending item. */
  adoptOwn(message) {
    const entry = this.outbox.find((e) => e.seq === null && e.text === message.content);
    if (!entry || this.bySeq.has(message.seq)) return false;
    entry.seq = message.seq;
    this.insertBySeq(entry.li, message.seq);
    this.setTime(entry.li, message.timestamp);
    return true;
  }

  confirmed(entry, seq) {
    this.outbox.splice(this.outbox.indexOf(entry), 1);
    const { li } = entry;
    li.classList.remove("pending");
    li.removeAttribute("aria-busy");
    li.title = "";
    if (entry.seq !== null) return; // already in place
    if (this.bySeq.has(seq)) li.remove(); // shown from its frame already
    else this.insertBySeq(li, seq);
  }

  failed(entry, error) {
    this.outbox.splice(this.outbox.indexOf(entry), 1);
    const { li, text } = entry;
    li.classList.replace("pending", "failed");
    li.removeAttribute("aria-busy");
    li.title = "";
    // A ServerError has a protocol code (rate_limited, …); a ConnectionClosed a number.
    const why = typeof error?.code === "string" ? `${error.code}: ${error.message}` : error.message;
    const retry = el("button", { className: "link-button", text: "Retry" });
    retry.type = "button";
    retry.addEventListener("click", () => {
      li.remove();
      this.send(text);
    });
    const note = el("p", { className: "send-error", testid: "send-error" });
    note.textContent = `Not sent — ${why}. `;
    note.append(retry);
    li.querySelector(".message-body").append(note);
  }

  // -- our typing indicator --

  onComposerInput() {
    if (!this.input.value.trim()) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (now - this.typingSentAt < TYPING_RENEW_MS) return;
    if (this.client.typing(true)) {
      this.typingSentAt = now;
      this.typingOn = true;
    }
  }

  stopTyping() {
    if (this.typingOn) this.client.typing(false);
    this.typingOn = false;
    this.typingSentAt = 0;
  }

  // -- the others' typing --

  onTyping({ userId, username, isTyping }) {
    if (userId === this.userId) return; // our own other tab
    this.clearTyper(userId);
    if (isTyping) {
      const timer = setTimeout(() => {
        this.clearTyper(userId);
        this.renderTyping();
      }, TYPING_STALE_MS);
      this.typers.set(userId, { username, timer });
    }
    this.renderTyping();
  }

  clearTyper(userId) {
    const typer = this.typers.get(userId);
    if (!typer) return;
    clearTimeout(typer.timer);
    this.typers.delete(userId);
  }

  renderTyping() {
    const names = [...this.typers.values()].map((t) => t.username);
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) {
      text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    }
    const box = byId("typing-indicator");
    box.textContent = text;
    box.dataset.active = String(names.length > 0);
  }

  // -- presence --

  setPresence(users) {
    this.presence = new Map(users.map((u) => [u.userId, u.username]));
    this.renderPresence();
  }

  addPerson({ userId, username }) {
    this.presence.set(userId, username);
    this.renderPresence();
  }

  removePerson({ userId }) {
    this.presence.delete(userId);
    this.clearTyper(userId);
    this.renderTyping();
    this.renderPresence();
  }

  renderPresence() {
    const people = [...this.presence].sort(byName);
    const items = people.map(([userId, name]) =>
      personItem(userId, name, { me: userId === this.userId, testid: "presence-user" }),
    );
    byId("presence-list").replaceChildren(...items);
    byId("presence-count").textContent = String(people.length);
  }

  // -- scrolling and older history --

  bindScroll() {
    this.scroller.addEventListener(
      "scroll",
      () => {
        if (this.scroller.scrollTop < LOAD_OLDER_THRESHOLD_PX) this.loadOlder();
      },
      { passive: true },
    );
    this.olderButton.addEventListener("click", () => this.loadOlder());
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  updateOlderButton() {
    this.olderButton.hidden = !this.hasMore;
    this.olderButton.disabled = this.loadingOlder;
    this.olderButton.textContent = this.loadingOlder ? "Loading…" : "Load older messages";
  }

  updateEmpty() {
    byId("chat-empty").hidden = !this.historyLoaded || this.list.childElementCount > 0;
  }

  close() {
    this.client.close();
  }
}

// --- instructor dashboard ------------------------------------------------------------------

const CHART = { height: 180, top: 18, right: 8, bottom: 24, left: 34, minWidth: 260 };
/** Room for one time label under the bars, in pixels. */
const CHART_LABEL_PX = 72;

/** A round axis maximum ≥ `value` whose half is also round: 2, 4, 10, 20, 40, 100, … */
function niceMax(value) {
  for (let power = 1; ; power *= 10) {
    for (const step of [1, 2, 5]) if (2 * step * power >= value) return 2 * step * power;
  }
}

/** Events per minute as bars; every bar has a tooltip, a few minutes get axis labels.
 * `width` is the box's own (one SVG unit = one CSS pixel), so text keeps its size. */
function activityChart(perMinute, width) {
  const { height, top, right, bottom, left } = CHART;
  const counts = perMinute.map((p) => (isNumber(p.events) ? p.events : 0));
  const total = counts.reduce((a, b) => a + b, 0);
  const max = niceMax(Math.max(1, ...counts));
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const yOf = (v) => top + plotH - (v / max) * plotH;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": `Events per minute over the last ${perMinute.length} minutes: ${total} in total`,
    "data-testid": "activity-chart",
    "data-total": total,
  });
  for (const tick of [0, max / 2, max]) {
    const y = yOf(tick);
    const line = { class: tick ? "grid" : "axis", x1: left, x2: width - right, y1: y, y2: y };
    chart.append(svg("line", line));
    const label = { class: "tick", x: left - 6, y: y + 4, "text-anchor": "end" };
    chart.append(svg("text", label, wholeNumber.format(tick)));
  }
  const slot = plotW / Math.max(1, perMinute.length);
  const labelEvery = Math.ceil(perMinute.length / Math.max(1, Math.floor(plotW / CHART_LABEL_PX)));
  perMinute.forEach((point, i) => {
    const current = i === perMinute.length - 1; // the minute still running
    const x = left + i * slot;
    const events = counts[i];
    const when = clockTime(point.minute);
    const middle = x + slot / 2;
    const bar = svg("g", {
      class: current ? "bar current" : "bar",
      "data-testid": "activity-bar",
      "data-events": events,
    });
    const tooltip = `${when}: ${events} event${events === 1 ? "" : "s"}`;
    bar.append(svg("title", {}, current ? `${tooltip} (this minute, so far)` : tooltip));
    // A full-height transparent rect: the tooltip also shows over short or empty bars.
    bar.append(svg("rect", { class: "bar-hit", x, y: top, width: slot, height: plotH }));
    const h = (events / max) * plotH;
    const barTop = top + plotH - h;
    const barWidth = slot * 0.68; // the rest of the slot is the gap between bars
    const fill = { class: "bar-fill", x: x + slot * 0.16, y: barTop, width: barWidth, height: h };
    bar.append(svg("rect", { ...fill, rx: 2 }));
    if (events) {
      const value = { class: "bar-value", x: middle, y: barTop - 4, "text-anchor": "middle" };
      bar.append(svg("text", value, String(events)));
    }
    chart.append(bar);
    // Labels count back from the newest minute so "now" is always labelled.
    if ((perMinute.length - 1 - i) % labelEvery === 0) {
      const label = { class: "tick", x: middle, y: height - 6, "text-anchor": "middle" };
      chart.append(svg("text", label, current ? "now" : when));
    }
  });
  return chart;
}

class Dashboard {
  constructor(settings) {
    this.settings = settings;
    const template = document.getElementById("dashboard-template");
    this.root = template.content.firstElementChild.cloneNode(true);
    document.querySelector(".dashboard-slot").replaceWith(this.root);
    const { contextId, token } = settings;
    this.client = new AnalyticsWebSocketClient({ contextId, token });
    this.perMinute = null; // the last activity.perMinute, to redraw on resize
    this.chartWidth = 0;
    this.watchChartWidth();
  }

  field(id) {
    return byId(id, this.root);
  }

  async start() {
    const analytics = this.client;
    watchStatus("analytics", "Analytics", analytics, this.settings.contextId, this.root);
    analytics.on("metric_update", (frame) => this.update(frame.data));
    await analytics.connect();
    await analytics.subscribe(["activity", "engagement", "performance"]);
  }

  update({ metric, value, timestamp }) {
    if (!value) return;
    if (metric === "activity") this.showActivity(value);
    else if (metric === "engagement") this.showEngagement(value);
    else if (metric === "performance") this.showPerformance(value);
    const updated = this.field("metrics-updated");
    updated.dateTime = timestamp;
    updated.textContent = clockTime(timestamp, { seconds: true });
  }

  showActivity({ messages, edits, joins, events, perMinute = [] }) {
    this.field("activity-messages").textContent = formatCount(messages);
    this.field("activity-edits").textContent = formatCount(edits);
    this.field("activity-joins").textContent = formatCount(joins);
    this.field("activity-events").textContent = formatCount(events);
    // W/60 + 1 calendar minutes, the first and the last partial.
    if (perMinute.length > 1) {
      this.field("activity-window").textContent = `last ${perMinute.length - 1} min`;
    }
    this.perMinute = perMinute;
    this.drawChart();
  }

  drawChart() {
    const box = this.field("activity-chart-box");
    this.chartWidth = Math.max(CHART.minWidth, Math.round(box.clientWidth || 560));
    box.replaceChildren(activityChart(this.perMinute, this.chartWidth));
  }

  /** Redraw at the new width when the layout changes (the text would scale otherwise). */
  watchChartWidth() {
    const box = this.field("activity-chart-box");
    new ResizeObserver(() => {
      const width = Math.max(CHART.minWidth, Math.round(box.clientWidth));
      if (this.perMinute && width !== this.chartWidth) this.drawChart();
    }).observe(box);
  }

  showEngagement({ onlineUsers, activeUsers, messagesPerActiveUser, participationRate }) {
    this.field("engagement-online").textContent = formatCount(onlineUsers);
    this.field("engagement-active").textContent = formatCount(activeUsers);
    this.field("engagement-per-user").textContent = formatDecimal(messagesPerActiveUser);
    this.field("engagement-participation").textContent = formatRate(participationRate);
    this.setMeter("participation-meter", participationRate);
  }

  showPerformance({ submissions, averageScore, medianScore, completionRate, byAssessment = [] }) {
    const any = submissions > 0; // with no data the server sends 0s: show "–", not "0 %"
    this.field("performance-submissions").textContent = formatCount(submissions);
    this.field("performance-average").textContent = any ? formatScore(averageScore) : "–";
    this.field("performance-median").textContent = any ? formatScore(medianScore) : "–";
    this.field("performance-completion").textContent = any ? formatRate(completionRate) : "–";
    this.setMeter("completion-meter", any ? completionRate : 0);
    const rows = byAssessment.map((a) =>
      el("tr", {}, [
        el("td", { text: a.assessmentId }),
        el("td", { className: "num", text: formatCount(a.submissions) }),
        el("td", { className: "num", text: formatScore(a.averageScore) }),
      ]),
    );
    if (!rows.length) {
      const cell = el("td", { className: "muted", text: "No submissions yet." });
      cell.colSpan = 3;
      rows.push(el("tr", {}, [cell]));
    }
    this.field("performance-table").tBodies[0].replaceChildren(...rows);
  }

  setMeter(id, rate) {
    const share = isNumber(rate) ? Math.min(1, Math.max(0, rate)) : 0;
    this.field(id).style.width = `${share * 100}%`;
  }

  close() {
    this.client.close();
  }
}

// --- shared editor ------------------------------------------------------------------------

/** An offset in the text moved past remote `ops` (each in the positions left by the one
 * before). Text inserted exactly at the offset stays after it; a deletion across it clamps. */
function shiftOffset(offset, ops) {
  for (const op of ops) {
    if (op.position >= offset) continue;
    if (op.type === "insert") offset += op.text.length;
    else offset -= Math.min(op.length, offset - op.position);
  }
  return offset;
}

const clamp = (value, low, high) => Math.min(high, Math.max(low, value));

class EditorPane {
  constructor(settings) {
    this.settings = settings;
    const { contextId, token } = settings;
    this.client = new CollaborationWebSocketClient({ contextId, token });
    this.userId = settings.userId;
    this.textarea = byId("editor");
    this.mirror = byId("cursor-layer");
    this.savedEl = byId("doc-saved");
    this.doc = null;
    this.edits = 0; // generation of local edits, for the saved indicator
    this.cursorTimer = null;
    this.cursorSentAt = -Infinity;
    this.cursorKey = "";
    this.movedAt = new Map(); // userId -> when their caret last moved (for the name label)
  }

  async start() {
    const collab = this.client;
    watchStatus("collaboration", "Editor", collab, this.settings.contextId, byId("editor-pane"));
    collab.on("statechange", ({ state }) => {
      this.showSaved();
      if (state === "closed") this.textarea.disabled = true; // edits would go nowhere now
      if (state !== "connected") return;
      this.cursorKey = ""; // the others lost our cursor with the old socket: send it again
      this.queueCursor();
    });
    const info = await collab.connect();
    this.userId = info.userId;
    this.doc = await collab.join(this.settings.sessionId);
    this.attach();
  }

  attach() {
    const { doc, textarea } = this;
    textarea.value = doc.text;
    textarea.disabled = false;
    doc.on("change", (change) => this.onRemoteChange(change));
    doc.on("cursor", ({ userId }) => {
      this.movedAt.set(userId, performance.now());
      this.renderCursors();
    });
    doc.on("participants", () => {
      this.renderParticipants();
      this.renderCursors();
    });
    doc.on("error", (frame) => {
      const why = `${frame.data?.code ?? "error"}: ${frame.error ?? "no reason given"}`;
      const text = `An edit was refused (${why}); the text was re-synchronised with the server.`;
      showAlert("editor-edit", text, "warning");
    });
    textarea.addEventListener("input", () => this.onInput());
    // Only what the user does: setSelectionRange() after a remote change fires `select`
    // too, but the others' clients already moved our caret through that change.
    const moved = () => document.activeElement === textarea && this.queueCursor();
    for (const type of ["keyup", "click", "focus", "select"]) {
      textarea.addEventListener(type, moved);
    }
    document.addEventListener("selectionchange", moved);
    textarea.addEventListener("scroll", () => {
      this.mirror.scrollTop = textarea.scrollTop;
    });
    new ResizeObserver(() => this.renderCursors()).observe(textarea);
    this.renderParticipants();
    this.renderCursors();
    this.showSaved("saved");
  }

  // -- local edits: the textarea is the truth; one diff per input event --

  onInput() {
    try {
      this.doc.setText(this.textarea.value);
    } catch (error) {
      // Not joined any more (left) or an impossible edit: show the document as it is.
      showAlert("editor-edit", `Could not apply the edit: ${error.message}`, "warning");
      this.textarea.value = this.doc.text;
    }
    this.trackSave();
    this.renderCursors(); // the others' carets moved with our edit
    this.queueCursor();
  }

  async trackSave() {
    const generation = ++this.edits;
    this.showSaved("saving");
    await this.doc.synced();
    if (generation === this.edits) this.showSaved("saved");
  }

  showSaved(state = this.savedEl.dataset.state) {
    const online = this.client.state === "connected";
    let text = { saving: "saving…", saved: "saved", idle: "connecting…" }[state] ?? state;
    if (this.client.state === "closed") {
      text = state === "saving" ? "not saved — disconnected" : "not connected";
    } else if (!online) {
      if (state === "saving") text = "offline — edits kept, will sync";
      else if (state === "saved") text = "offline";
    }
    this.savedEl.dataset.state = state;
    this.savedEl.dataset.online = String(online);
    this.savedEl.textContent = text;
    if (this.doc) byId("doc-version").textContent = `v${this.doc.version}`;
  }

  // -- remote edits: new text, our selection carried through the change --

  onRemoteChange({ ops }) {
    const ta = this.textarea;
    const text = this.doc.text;
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = ta;
    // ops null: the client rebased on a snapshot; no exact mapping, so keep the offsets.
    const move = (offset) => (ops ? shiftOffset(offset, ops) : Math.min(offset, text.length));
    // (Setting the value also resets the browser's undo history: a known textarea limit.)
    if (ta.value !== text) ta.value = text;
    ta.setSelectionRange(move(selectionStart), move(selectionEnd), selectionDirection);
    ta.scrollTop = scrollTop;
    this.showSaved();
    this.renderCursors();
  }

  // -- our cursor, throttled --

  /** Send our selection soon: at once if the last frame is old enough, else when it is
   * (one trailing frame carries the latest position). */
  queueCursor(wait = Math.max(0, this.cursorSentAt + CURSOR_GAP_MS - performance.now())) {
    if (!this.doc || this.cursorTimer !== null) return;
    this.cursorTimer = setTimeout(() => {
      this.cursorTimer = null;
      this.sendCursor();
    }, wait);
  }

  sendCursor() {
    const { selectionStart, selectionEnd } = this.textarea;
    const key = `${selectionStart}:${selectionEnd}:${this.doc.version}:${this.doc.text.length}`;
    if (key === this.cursorKey) return;
    if (this.doc.cursor(selectionStart, selectionEnd)) {
      this.cursorKey = key;
      this.cursorSentAt = performance.now();
    } else if (this.client.connected) {
      this.queueCursor(CURSOR_RETRY_MS); // paced out: the last position must still get there
    } // (offline: sent again on reconnect, from the statechange handler)
  }

  // -- the others: participants and their carets in the mirror layer --

  nameOf(userId) {
    return this.doc.participants.get(userId)?.username ?? userId;
  }

  renderParticipants() {
    const people = [...this.doc.participants.values()];
    const entries = people.map((p) => [p.userId, p.username || p.userId, p.role]).sort(byName);
    const items = entries.map(([userId, name, role]) =>
      personItem(userId, name, {
        me: userId === this.userId,
        note: role === "participant" ? "" : role, // observers and hosts are marked
        testid: "participant",
      }),
    );
    byId("participants").replaceChildren(...items);
  }

  /** The text, cut where the others' selections start and end, with a caret mark at each
   * caret: laid out exactly like the textarea, so the marks sit over the right characters. */
  renderCursors() {
    if (!this.doc) return;
    const text = this.textarea.value;
    const marks = [];
    for (const cursor of this.doc.cursors.values()) {
      if (cursor.userId === this.userId) continue; // our own other tab
      const caret = clamp(cursor.selectionEnd ?? cursor.position, 0, text.length);
      const anchor = clamp(cursor.position, 0, text.length);
      const start = Math.min(anchor, caret);
      marks.push({ userId: cursor.userId, caret, start, end: Math.max(anchor, caret) });
    }
    const ends = marks.flatMap((m) => [m.start, m.end]);
    const cuts = [...new Set([0, text.length, ...ends])].sort((a, b) => a - b);
    const parts = document.createDocumentFragment();
    cuts.forEach((at, i) => {
      for (const mark of marks) if (mark.caret === at) parts.append(this.caretMark(mark.userId));
      const next = cuts[i + 1];
      if (next === undefined) return;
      const piece = text.slice(at, next);
      const selection = marks.findLast((m) => m.start <= at && next <= m.end);
      if (!selection) {
        parts.append(piece);
        return;
      }
      const span = el("span", { className: "remote-selection", text: piece });
      span.style.backgroundColor = colourFor(selection.userId, 0.2);
      parts.append(span);
    });
    parts.append("\u200b"); // so a trailing newline gets its own line, as in the textarea
    this.mirror.replaceChildren(parts);
    this.fitMirror();
  }

  caretMark(userId) {
    const label = el("span", { className: "remote-caret-label", text: this.nameOf(userId) });
    // Marks are rebuilt on every render: resume the label's fade where it was.
    const since = performance.now() - (this.movedAt.get(userId) ?? -Infinity);
    label.style.animationDelay = `-${Math.min(since, 60000)}ms`;
    const mark = el("span", { className: "remote-caret", testid: "remote-cursor" }, [label]);
    mark.dataset.userId = userId;
    mark.style.setProperty("--who", colourFor(userId));
    return mark;
  }

  /** Cover exactly the textarea's text area (inside its border, beside its scrollbar), so
   * both wrap lines at the same width. */
  fitMirror() {
    const ta = this.textarea;
    const style = this.mirror.style;
    style.left = `${ta.offsetLeft + ta.clientLeft}px`;
    style.top = `${ta.offsetTop + ta.clientTop}px`;
    style.width = `${ta.clientWidth}px`;
    style.height = `${ta.clientHeight}px`;
    this.mirror.scrollTop = ta.scrollTop;
  }

  close() {
    this.client.close();
  }
}

// --- the page ------------------------------------------------------------------------------

function showIdentity(settings) {
  const { roles } = settings;
  const role = roles.has("admin") ? "admin" : roles.has("instructor") ? "instructor" : "learner";
  byId("identity").hidden = false;
  const picture = avatar(settings.userId, settings.name, "avatar avatar-lg");
  picture.dataset.testid = "me-avatar";
  byId("me-avatar").replaceWith(picture);
  byId("me-name").textContent = settings.name;
  byId("me-sub").textContent = settings.userId;
  const badge = byId("me-role");
  badge.textContent = role;
  badge.dataset.role = role;
  byId("me-context").textContent = settings.contextId;
  byId("chat-room").textContent = settings.contextId;
  byId("doc-session").textContent = settings.sessionId;
  const exp = Number(settings.claims.exp) * 1000;
  if (!Number.isFinite(exp)) return;
  if (exp <= Date.now()) {
    const when = new Date(exp).toLocaleString();
    const text = `This token expired at ${when}; the server will refuse it. ${HOW_TO_GET_A_LINK}`;
    showAlert("token", text);
  } else {
    const until = clockTime(new Date(exp).toISOString());
    byId("me-expiry").textContent = `· token valid until ${until}`;
  }
}

/** Start one pane; a failure is shown, never thrown into the void. */
async function startPane(key, label, pane, contextId) {
  try {
    await pane.start();
  } catch (error) {
    showAlert(key, explainFailure(label, error, contextId));
  }
}

function main() {
  // A new link pasted into this tab only changes the fragment: start over with it.
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).has("token")) location.reload();
  });
  const settings = readSettings();
  if (!settings.token || !settings.claims || !settings.contextId) {
    if (settings.token && !settings.claims) {
      showAlert("token", "The token in the link is not a readable JWT.");
    } else if (settings.token) {
      showAlert("token", "No context: add context=<id> to the link (after the #).");
    }
    byId("no-token").hidden = false;
    return;
  }
  showIdentity(settings);
  byId("statuses").hidden = false;
  byId("app").hidden = false;

  const panes = [new ChatPane(settings)];
  startPane("chat", "Chat", panes[0], settings.contextId);
  // Learners never open the analytics socket (the server would refuse it with 4403).
  if (settings.staff) {
    panes.push(new Dashboard(settings));
    startPane("analytics", "Analytics", panes.at(-1), settings.contextId);
  }
  panes.push(new EditorPane(settings));
  startPane("collaboration", "Editor", panes.at(-1), settings.contextId);
  // Close politely: the others see us leave at once rather than after a timeout.
  window.addEventListener("pagehide", () => panes.forEach((pane) => pane.close()));
}

main();
