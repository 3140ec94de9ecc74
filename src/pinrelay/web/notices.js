/*
 * pinrelay web messenger: what is not chat.  Incidents (``system`` messages,
 * PROTOCOL "System messages") show as banners at the top while they last; pushes,
 * broadcasts and make-goods go to a Notifications list of their own (app.js keeps
 * it as the conversation NOTICES).  Web Push and Matrix messages are for other
 * applications' code (encrypted or machine-readable) and are not shown.
 *
 * A system message is never stored nor acked: the same news comes again at each
 * hello and may come live as well, so an incident keeps only its newest message
 * (ids ``<incident>.<n>``).  A resolved incident's banner stays until dismissed;
 * dismissed incidents are remembered (state.dismissed) so a later hello does not
 * bring their banner back.
 */
import { $, el } from "./dom.js";

/** The conversation key of the Notifications list: not a PIN, not a group id. */
export const NOTICES = "notices";

/** The kinds shown in Notifications, with their labels. */
export const NOTICE_KINDS = { push: "push", broadcast: "broadcast", makegood: "make-good" };

const DISMISSED_KEPT = 200;

/** A person's reading of a push's ``data``: its text if it has one, else its JSON. */
export function noticeText(kind, data) {
  if (data && typeof data === "object" && !Array.isArray(data)) {
    const words = [data.title, data.text ?? data.body].filter((v) => typeof v === "string");
    if (words.length) {
      const code = kind === "makegood" && typeof data.code === "string" ? ` (code ${data.code})` : "";
      return words.join(": ") + code;
    }
  }
  const raw = JSON.stringify(data) ?? ""; // a frame without data: nothing to show
  return raw.length > 2000 ? raw.slice(0, 2000) + "…" : raw;
}

/**
 * @param {object} app what app.js lends: state() (the device's, or null), save(),
 *   announce(text)
 * @returns {{welcome: () => void, system: (frame: object) => void, render: () => void}}
 */
export function noticeScreens(app) {
  const incidents = new Map(); // incident id -> {n, data}: the newest message of each
  const announced = new Map(); // incident id -> n: a reconnect's repeat is not said again

  // Right after welcome the relay sends every incident that concerns the device: the
  // banners are those, not what an earlier link heard.
  function welcome() {
    incidents.clear();
    render();
  }

  function system(f) {
    const data = f.data && typeof f.data === "object" ? f.data : {};
    const id = typeof data.incident === "string" ? data.incident : null;
    const n = Number(String(f.id).split(".").pop());
    if (!id || !Number.isInteger(n)) return;
    const had = incidents.get(id);
    if (had && had.n >= n) return; // the same news again (hello and live)
    incidents.set(id, { n, data });
    const state = app.state();
    if (data.event !== "resolved" && state) {
      // Reopened or updated after a dismissal: shown again.
      state.dismissed = (state.dismissed || []).filter((d) => d !== id);
    }
    const fresh = (announced.get(id) ?? -1) < n;
    announced.set(id, n);
    if (fresh && !(state && (state.dismissed || []).includes(id))) {
      const what = data.event === "resolved" ? "Resolved" : "Service notice";
      app.announce(`${what}: ${String(data.text ?? "")}`);
    }
    render();
  }

  function render() {
    const state = app.state();
    const dismissed = new Set((state && state.dismissed) || []);
    const shown = [...incidents].filter(([id]) => !dismissed.has(id));
    $("incidents").replaceChildren(...shown.map(([id, { data }]) => {
      const resolved = data.event === "resolved";
      const severity = typeof data.severity === "string" ? data.severity : "";
      const where = [data.component, severity].filter((v) => typeof v === "string" && v).join(", ");
      return el("li", { className: "incident" + (resolved ? " resolved" : ""), "data-incident": id,
        "data-severity": severity },
      el("p", {},
        el("strong", { text: resolved ? "Resolved" : "Service notice" }),
        where ? ` (${where})` : "", ": ", String(data.text ?? "")),
      resolved
        ? el("button", { type: "button", className: "quiet", "data-dismiss": id, "data-focus": "dismiss " + id },
          "Dismiss", el("span", { className: "sr-only", text: " this notice" }))
        : null);
    }));
    $("incidents").hidden = shown.length === 0;
  }

  $("incidents").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-dismiss]");
    const state = app.state();
    if (!button || !state) return;
    const list = (state.dismissed || []).concat(button.dataset.dismiss);
    state.dismissed = list.slice(-DISMISSED_KEPT);
    app.save();
    render();
  });

  return { welcome, system, render };
}
