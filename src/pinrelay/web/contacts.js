/*
 * pinrelay web messenger: contacts (PROTOCOL "Contacts").  Inviting a PIN; the
 * invitations waiting for an answer (accept, decline, block); a conversation's
 * Contact panel (remove, block, unblock, invite again); the blocked PINs.  app.js
 * keeps the list (state.contacts: PIN -> invited | pending | accepted | blocked) and
 * refreshes it from the relay; every action here asks for it again afterwards, so
 * the relay's word is what shows.  Removing and blocking ask first.
 */
import { $, el, refocus } from "./dom.js";

export const PIN_RE = /^[0-9A-F]{8}$/;

/**
 * @param {object} app what app.js lends: state() (the device's, or null), api(method,
 *   path, body), setStatus(text, tone), refreshContacts(), linked()
 * @returns {{render: () => void}} drawn on each of app.js's renders
 */
export function contactScreens(app) {
  async function act(pin, method, path, body, done) {
    try {
      await app.api(method, path, body);
      if (done) app.setStatus(done, app.linked() ? "ok" : "");
    } catch (e) {
      app.setStatus(String(e.message), "bad");
    }
    await app.refreshContacts();
    // The control may be gone (an answered invitation, Block become Unblock).
    refocus(`[data-focus="contact ${pin}"]`, "#contact-summary", "#invite-pin");
  }

  const mine = () => `/v1/devices/${app.state().pin}`;
  // A listed button's name says whose PIN it acts on: "Block 2A0B6EE0", not just
  // "Block" (the panel's act on the open conversation's PIN, named in its title).
  function button(action, pin, label, what, quiet = true) {
    return el("button", {
      type: "button", className: quiet ? "quiet" : "", "data-act": action, "data-pin": pin,
      "data-focus": `${action} ${pin}`,
    }, label, el("span", { className: "sr-only", text: what ? ` ${what} ${pin}` : ` ${pin}` }));
  }

  // --- drawing ------------------------------------------------------------------------
  function renderInvitations(state) {
    const list = $("invitations");
    list.replaceChildren();
    for (const [pin, s] of Object.entries(state.contacts).sort()) {
      if (s === "pending") {
        list.append(el("li", { className: "invitation" },
          el("p", { text: `${pin} invited you.` }),
          el("div", { className: "row" },
            button("accept", pin, "Accept", "invitation from", false),
            button("decline", pin, "Decline", "invitation from"),
            button("block", pin, "Block"))));
      } else if (s === "invited") {
        list.append(el("li", { className: "invitation" },
          el("p", { text: `Invitation sent to ${pin}; waiting for an answer.` })));
      }
    }
    $("invitations-box").hidden = list.children.length === 0;
  }

  function renderBlocked(state) {
    const pins = Object.entries(state.contacts).filter(([, s]) => s === "blocked").map(([p]) => p);
    $("blocked").replaceChildren(...pins.sort().map((pin) => el("li", { className: "blocked" },
      el("span", { className: "pin", text: pin }), button("unblock", pin, "Unblock"))));
    $("blocked-box").hidden = pins.length === 0;
  }

  const SAID = {
    accepted: (pin) => `${pin} and you are contacts.`,
    invited: (pin) => `You invited ${pin}; no answer yet.`,
    pending: (pin) => `${pin} invited you: accept or decline under Invitations.`,
    blocked: (pin) => `You blocked ${pin}: they cannot message or invite you.`,
    none: (pin) => `${pin} is not a contact: messages to them are refused.`,
  };

  function renderPanel(state) {
    const pin = state.open;
    const shown = Boolean(pin) && PIN_RE.test(pin); // not a group, not Notifications
    $("contact-panel").hidden = !shown;
    if (!shown) return;
    const s = state.contacts[pin] || "none";
    $("contact-state").textContent = SAID[s](pin);
    $("contact-summary").textContent = s === "blocked" ? "Contact (blocked)" : "Contact";
    $("contact-remove").hidden = !(s === "accepted" || s === "invited");
    $("contact-block").hidden = s === "blocked";
    $("contact-unblock").hidden = s !== "blocked";
    $("contact-invite").hidden = s !== "none";
  }

  function render() {
    const state = app.state();
    if (!state) return;
    renderInvitations(state);
    renderBlocked(state);
    renderPanel(state);
  }

  // --- acting -------------------------------------------------------------------------
  function run(action, pin) {
    if (action === "accept") {
      return act(pin, "POST", `${mine()}/contacts/${pin}/accept`, undefined, `${pin} is a contact now.`);
    }
    if (action === "decline") {
      return act(pin, "POST", `${mine()}/contacts/${pin}/decline`, undefined, `Declined ${pin}.`);
    }
    if (action === "invite") {
      return act(pin, "POST", `${mine()}/contacts`, { pin }, `Invitation sent to ${pin}.`);
    }
    if (action === "unblock") {
      return act(pin, "DELETE", `${mine()}/blocks/${pin}`, undefined, `${pin} is unblocked (not a contact).`);
    }
    if (action === "remove") {
      if (!window.confirm(`Remove ${pin} from your contacts? Neither of you can then message the other.`)) return null;
      return act(pin, "DELETE", `${mine()}/contacts/${pin}`, undefined, `${pin} is no longer a contact.`);
    }
    if (action === "block") {
      if (!window.confirm(`Block ${pin}? They will not be able to message or invite you, and are not told.`)) return null;
      return act(pin, "POST", `${mine()}/blocks`, { pin }, `Blocked ${pin}.`);
    }
    return null;
  }

  $("invite-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const pin = $("invite-pin").value.trim().toUpperCase();
    if (!PIN_RE.test(pin)) {
      app.setStatus("A PIN is 8 hexadecimal digits, e.g. 2A0B6EE0.", "bad");
      return;
    }
    $("invite-pin").value = "";
    run("invite", pin);
  });

  for (const list of ["invitations", "blocked"]) {
    $(list).addEventListener("click", (e) => {
      const b = e.target.closest("button[data-act]");
      if (b) run(b.dataset.act, b.dataset.pin);
    });
  }
  for (const action of ["remove", "block", "unblock", "invite"]) {
    $("contact-" + action).addEventListener("click", () => run(action, app.state().open));
  }

  return { render };
}
