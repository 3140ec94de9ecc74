/*
 * pinrelay web messenger: making and changing groups (PROTOCOL "Contacts, chat and
 * groups").  A group is made of the device's accepted contacts (the relay leaves
 * out any other PIN and names it); its creator adds and removes members; any member
 * leaves.  app.js keeps the groups (state.groups: id -> {name, creator, members,
 * left}) and refreshes them from the relay; these forms change them through the
 * same routes, then ask again, so a change made elsewhere (the CLI) shows as well.
 */
import { $, el, refocus } from "./dom.js";

/**
 * @param {object} app what app.js lends: state() (the device's, or null), api(method,
 *   path, body), setStatus(text, tone), announce(text), refreshGroups(), open(peer),
 *   render(), save(), groupName(id)
 * @returns {{render: () => void}} drawn on each of app.js's renders
 */
export function groupScreens(app) {
  let drawnCandidates = null; // what the lists were drawn from: redrawn only on change
  let drawnMembers = null;
  let drawnAddable = null;

  function accepted(state) {
    return Object.entries(state.contacts)
      .filter(([, s]) => s === "accepted")
      .map(([pin]) => pin)
      .sort();
  }

  function keep(id, answer) {
    const state = app.state();
    state.groups[id] = { name: answer.name, creator: answer.creator, members: answer.members };
    app.save();
  }

  function leftOut(ignored) {
    return ignored && ignored.length
      ? ` Not added (not accepted contacts): ${ignored.join(", ")}.`
      : "";
  }

  // --- drawing ------------------------------------------------------------------------
  function renderCandidates(state) {
    const pins = accepted(state);
    const key = pins.join(" ");
    if (key === drawnCandidates) return; // a redraw would drop what is ticked
    drawnCandidates = key;
    const list = $("group-candidates");
    const ticked = new Set(
      [...list.querySelectorAll("input:checked")].map((box) => box.value),
    );
    list.replaceChildren(...pins.map((pin) => el("li", {},
      el("label", { className: "check" },
        el("input", {
          type: "checkbox", name: "member", value: pin, checked: ticked.has(pin),
          "data-focus": "candidate " + pin,
        }),
        " " + pin))));
    $("group-no-contacts").hidden = pins.length > 0;
  }

  function renderPanel(state) {
    const id = state.open;
    const g = id ? state.groups[id] : null;
    $("group-panel").hidden = !g || Boolean(g.left) || !g.members;
    $("group-left").hidden = !g || !g.left;
    if (!g || g.left || !g.members) return;
    const mine = g.creator === state.pin;
    $("group-summary").textContent = `Members (${g.members.length})`;
    const key = [id, mine, g.creator, ...g.members].join(" ");
    if (key !== drawnMembers) {
      drawnMembers = key;
      $("group-members").replaceChildren(...g.members.map((pin) => {
        const notes = [pin === state.pin ? "you" : null, pin === g.creator ? "creator" : null]
          .filter(Boolean);
        const remove = mine && pin !== state.pin
          ? el("button", {
            type: "button", className: "quiet", "data-act": "remove", "data-pin": pin,
            "data-focus": "remove " + pin,
          }, "Remove", el("span", { className: "sr-only", text: ` ${pin} from the group` }))
          : null;
        return el("li", { className: "member", "data-member": pin },
          el("span", { className: "pin", text: pin }),
          notes.length ? el("span", { className: "hint", text: ` (${notes.join(", ")})` }) : null,
          remove);
      }));
    }
    const addable = accepted(state).filter((pin) => !g.members.includes(pin));
    $("group-add").hidden = !mine || addable.length === 0;
    if (addable.join(" ") === drawnAddable) return; // an open picker stays as it is
    drawnAddable = addable.join(" ");
    const select = $("group-add-pin");
    const chosen = select.value;
    select.replaceChildren(...addable.map((pin) => el("option", { value: pin, text: pin })));
    if (addable.includes(chosen)) select.value = chosen;
  }

  function render() {
    const state = app.state();
    if (!state) return;
    renderCandidates(state);
    renderPanel(state);
  }

  // --- acting -------------------------------------------------------------------------
  async function act(work) {
    try {
      await work(app.state());
    } catch (e) {
      app.setStatus(String(e.message), "bad");
    }
    app.render();
    await app.refreshGroups();
    refocus("#group-summary", "#group-left", "#messages"); // its control may be gone
  }

  $("group-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const groupName = $("group-name").value.trim();
    const members = [...$("group-candidates").querySelectorAll("input:checked")]
      .map((box) => box.value);
    if (!groupName || !members.length) {
      app.setStatus("A group needs a name and at least one member.", "bad");
      return;
    }
    act(async (state) => {
      const answer = await app.api("POST", `/v1/devices/${state.pin}/groups`, {
        name: groupName, members,
      });
      keep(answer.group, answer);
      $("group-form").reset();
      drawnCandidates = null;
      $("new-group").open = false;
      app.setStatus(`Group ${answer.name} made.${leftOut(answer.ignored)}`, "ok");
      app.open(answer.group);
    });
  });

  $("group-add").addEventListener("submit", (e) => {
    e.preventDefault();
    const pin = $("group-add-pin").value;
    if (!pin) return;
    act(async (state) => {
      const id = state.open;
      const answer = await app.api("POST", `/v1/devices/${state.pin}/groups/${id}/members`, {
        pins: [pin],
      });
      keep(id, answer);
      const added = answer.members.includes(pin);
      app.setStatus(added ? `${pin} added to ${answer.name}.` : leftOut(answer.ignored).trim(),
        added ? "ok" : "bad");
    });
  });

  $("group-members").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-act=remove]");
    if (!button) return;
    const pin = button.dataset.pin;
    act(async (state) => {
      const id = state.open;
      await app.api("DELETE", `/v1/devices/${state.pin}/groups/${id}/members/${pin}`);
      const g = state.groups[id];
      g.members = g.members.filter((m) => m !== pin);
      app.save();
      app.setStatus(`${pin} removed from ${app.groupName(id)}.`, "ok");
    });
  });

  $("group-leave").addEventListener("click", () => {
    const state = app.state();
    const id = state.open;
    if (!window.confirm(`Leave ${app.groupName(id)}? Only its creator can add you again.`)) return;
    act(async (s) => {
      await app.api("DELETE", `/v1/devices/${s.pin}/groups/${id}`);
      s.groups[id] = { name: s.groups[id].name, left: true };
      app.save();
      app.setStatus(`You left ${app.groupName(id)}.`, "ok");
      app.announce(`You left ${app.groupName(id)}.`);
    });
  });

  return { render };
}
