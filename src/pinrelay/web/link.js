/*
 * pinrelay web messenger: the link to the relay (docs/PROTOCOL.md "The link").
 *
 * One WebSocket at a time.  What it must get right (rule 3 of app.js):
 * a dead link is noticed (browsers hide WebSocket pings, so ``ping`` frames go out
 * and an unanswered one drops the link), and a lost link comes back with back-off
 * and full jitter, honouring ``drain`` and ``retry_after_ms``, trying the relay's
 * next link URL when one cannot be reached.  What the frames mean is app.js's.
 */

const PING_EVERY_MS = 15000;
const PONG_WITHIN_MS = 10000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 8000;

export class Link {
  /**
   * @param {object} o
   * @param {string[]} o.urls the relay's link URLs
   * @param {() => object} o.hello the hello frame for a new link
   * @param {(frame: object) => void} o.onFrame every frame but pong and drain
   * @param {(text: string, tone?: string) => void} o.onStatus
   */
  constructor({ urls, hello, onFrame, onStatus }) {
    this.urls = urls;
    this.hello = hello;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.ws = null;
    this.linked = false;
    this.stopped = true;
    this.halted = false; // a fatal error: no reconnect until resume()
    this.attempt = 0;
    this.urlIndex = 0;
    this.nextDelay = null;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.pingSeq = 0;
  }

  /** Sends a frame if the link is open; says whether it went. */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  start() {
    this.stopped = false;
    this.halted = false;
    this.attempt = 0;
    this.connect();
  }

  /** Closes the link for good (unlinking). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopPing();
    const old = this.ws;
    this.ws = null;
    this.linked = false;
    if (old) {
      old.onclose = null;
      old.close();
    }
  }

  /** After a fatal error: the relay closes the link, and it stays down. */
  halt() {
    this.halted = true;
  }

  resume() {
    this.halted = false;
    this.attempt = 0;
    this.wake();
  }

  /** Reconnects now if the link is down and may come back (page shown, online). */
  wake() {
    if (!this.stopped && !this.halted && !this.ws) this.connect();
  }

  /** The relay said how long to wait before the next attempt. */
  retryAfter(ms) {
    if (typeof ms === "number") this.nextDelay = ms;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.ws) return;
    if (!this.urls.length) {
      this.scheduleRetry("no link URL known");
      return;
    }
    const url = this.urls[this.urlIndex % this.urls.length];
    this.onStatus(this.attempt ? "Reconnecting…" : "Linking…");
    this.nextDelay = null;
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      this.scheduleRetry("cannot open " + url);
      return;
    }
    this.ws = sock;
    sock.onopen = () => sock.send(JSON.stringify(this.hello()));
    sock.onmessage = (ev) => {
      if (sock !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (frame && typeof frame.type === "string") this.frame(frame);
    };
    sock.onclose = (ev) => {
      if (sock === this.ws) this.dropped("closed " + ev.code);
    };
  }

  frame(f) {
    if (f.type === "welcome") {
      this.linked = true;
      this.attempt = 0;
      this.startPing();
    } else if (f.type === "pong") {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
      return;
    } else if (f.type === "drain") {
      this.nextDelay = f.retry_after_ms;
      this.onStatus("The relay is going away; reconnecting soon…");
      return;
    }
    this.onFrame(f);
  }

  dropped(reason) {
    const wasLinked = this.linked;
    this.ws = null;
    this.linked = false;
    this.stopPing();
    if (this.stopped || this.halted) return;
    if (!wasLinked) this.urlIndex += 1; // this URL failed: try the next one
    this.scheduleRetry(reason);
  }

  scheduleRetry(reason) {
    this.attempt += 1;
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    // Full jitter spreads a reconnect storm; a drain or an error says how long itself.
    const delay = this.nextDelay !== null ? this.nextDelay : Math.random() * cap;
    const seconds = Math.max(1, Math.round(delay / 1000));
    this.onStatus(`Link lost (${reason}); retrying in ${seconds} s…`, "bad");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    if (this.attempt % 3 === 0) this.refreshUrls();
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      if (!this.linked || this.pongTimer) return;
      this.send({ type: "ping", id: String(++this.pingSeq) });
      this.pongTimer = setTimeout(() => {
        // No pong: the link is dead even if the browser has not noticed.
        this.pongTimer = null;
        const dead = this.ws;
        if (dead) {
          dead.onclose = null;
          try { dead.close(); } catch (e) { /* already gone */ }
        }
        this.dropped("no answer to ping");
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
  }

  async refreshUrls() {
    try {
      const r = await fetch("/v1/info", { cache: "no-store" });
      const info = await r.json();
      if (Array.isArray(info.link_urls) && info.link_urls.length) this.urls = info.link_urls;
    } catch (e) {
      /* keep the ones we have */
    }
  }
}
