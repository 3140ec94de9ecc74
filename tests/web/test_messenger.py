"""The web messenger at /app in real browsers (issue 13): two browser contexts (one
device linked by a pairing code, one by PIN and token) and an SDK device invite,
accept and chat, through a relay killed (SIGKILL), then stopped (SIGTERM, a drain),
and started again on the same data and ports; receipts move ✓ → D → R; nothing is
shown twice; axe-core finds no serious violation; a phone's width needs no
horizontal scroll.

Artefacts: ``test-artifacts/web/conversation.png`` (a conversation, desktop),
``conversation-375px.png`` (the same at a phone's width), ``group.png`` (a
group's conversation, as a member) and ``group-creator.png`` (its creator's, with
the new-group form).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Locator, Page, expect

from pinrelay.api.webapp import SCRIPTS
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc
from tests.web.conftest import SdkDevice

NewContext = Callable[..., BrowserContext]
StartSdk = Callable[[RelayProc, dict[str, Any]], SdkDevice]

#: Every read the page sent was confirmed by a ``read_done`` (none left to send again).
READS_CONFIRMED = """() => {
  const s = JSON.parse(localStorage.getItem("pinrelay.messenger.v1") || "{}");
  return s.readsOut !== undefined && Object.keys(s.readsOut).length === 0 && s.readSeq > 0;
}"""
#: Records every state each outgoing message shows, in order (by its text).
WATCH_STATES = """() => {
  window.__seen = {};
  const box = document.getElementById("messages");
  const note = () => {
    for (const li of box.querySelectorAll("li.out")) {
      const text = li.querySelector(".text").textContent;
      const state = li.querySelector(".state").dataset.state;
      const seq = (window.__seen[text] = window.__seen[text] || []);
      if (seq[seq.length - 1] !== state) seq.push(state);
    }
  };
  new MutationObserver(note).observe(box, {childList: true, subtree: true, attributes: true});
}"""


class App:
    """One browser tab on /app, with what a person does there."""

    def __init__(self, context: BrowserContext, relay: RelayProc) -> None:
        self.page = context.new_page()
        #: Uncaught script errors and CSP violations: none may happen.
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        self.page.goto(f"{relay.url}/app")

    def link_with_code(self, code: str) -> None:
        self.page.get_by_label("Pairing code").fill(code)
        self.page.get_by_role("button", name="Link with the code").click()
        self.expect_linked()

    def link_with_token(self, pin: str, token: str) -> None:
        self.page.get_by_label("PIN", exact=True).fill(pin.lower())
        self.page.get_by_label("Token").fill(token)
        self.page.get_by_role("button", name="Link with the token").click()
        self.expect_linked()

    def expect_linked(self) -> None:
        expect(self.page.locator("#status")).to_contain_text("Linked to node-1")

    def invite(self, pin: str) -> None:
        self.page.get_by_label("Invite a PIN").fill(pin)
        self.page.get_by_role("button", name="Invite", exact=True).click()
        expect(self.page.locator("#invitations")).to_contain_text(f"Invitation sent to {pin}")

    def accept(self, pin: str) -> None:
        self.page.get_by_role("button", name=f"Accept invitation from {pin}").click()
        expect(self.contact(pin)).to_be_visible()

    def contact(self, pin: str) -> Locator:
        return self.page.locator(f'#contacts button[data-pin="{pin}"]')

    def unread(self, pin: str) -> Locator:
        return self.contact(pin).locator(".badge")

    def open(self, pin: str) -> None:
        self.contact(pin).click()
        expect(self.page.locator("#conversation-title")).to_have_text(f"Conversation with {pin}")

    def say(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")
        expect(self.bubble(text)).to_have_count(1)

    def bubble(self, text: str) -> Locator:
        return self.page.locator("#messages li").filter(
            has=self.page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
        )

    def state_of(self, text: str) -> Locator:
        return self.bubble(text).locator(".state")

    def texts(self) -> list[str]:
        return self.page.locator("#messages li .text").all_text_contents()

    def seen_states(self, text: str) -> list[str]:
        seen: list[str] = self.page.evaluate(f"() => window.__seen[{text!r}] || []")
        return seen


def device_token(relay: RelayProc, creds: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {creds['token']}"}


def serious(page: Page) -> list[str]:
    violations = Axe().run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


def no_horizontal_scroll(page: Page) -> bool:
    overflow: bool = page.evaluate(
        "() => document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
    return not overflow


def test_two_browsers_and_an_sdk_device_chat_through_a_restart(
    relay: RelayProc, new_context: NewContext, sdk_devices: StartSdk, artifacts: Path
) -> None:
    a, b, c = relay.create_device("web a"), relay.create_device("web b"), relay.create_device()
    code = httpx.post(
        f"{relay.url}/v1/devices/{a['pin']}/pairing", headers=relay.admin_headers()
    ).json()["code"]

    # A links with a pairing code, B with its PIN and token.
    app_a = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    app_a.link_with_code(code)
    app_b = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    app_b.link_with_token(b["pin"], b["token"])
    expect(app_a.page.locator("#me")).to_have_text(f"Device {a['pin']}")

    # A invites B; B accepts. C (the SDK) invites A over HTTP; A accepts.
    app_a.invite(b["pin"])
    app_b.accept(a["pin"])
    expect(app_a.contact(b["pin"])).to_be_visible()
    r = httpx.post(
        f"{relay.url}/v1/devices/{c['pin']}/contacts",
        json={"pin": a["pin"]},
        headers=device_token(relay, c),
    )
    assert r.status_code == 202, r.text
    app_a.accept(c["pin"])
    sdk = sdk_devices(relay, c)

    # A writes to B, who is not looking: ✓, then D; B sees it unread; B opens it: R.
    app_a.open(b["pin"])
    app_a.page.evaluate(WATCH_STATES)
    app_a.say("hello B")
    expect(app_a.state_of("hello B")).to_have_attribute("aria-label", "delivered")
    expect(app_b.unread(a["pin"])).to_have_attribute("data-unread", "1")
    expect(app_b.unread(a["pin"])).to_have_text("1 unread")
    app_b.open(a["pin"])
    expect(app_b.unread(a["pin"])).to_have_count(0)
    expect(app_a.state_of("hello B")).to_have_attribute("aria-label", "read")
    assert app_a.seen_states("hello B") == ["sending", "sent", "delivered", "read"]
    # B's read was confirmed (read_done): nothing is left to send again on a new link.
    app_b.page.wait_for_function(READS_CONFIRMED)
    # B answers while A looks at the conversation: read at once.
    app_b.say("hello A")
    expect(app_a.bubble("hello A")).to_have_count(1)
    expect(app_b.state_of("hello A")).to_have_attribute("aria-label", "read")
    expect(app_a.page.get_by_role("img", name="read")).to_have_count(1)

    # The SDK device and a browser: D and R both ways.
    handle = sdk.send(a["pin"], "hi from the SDK")
    sdk.wait_for(handle, "delivered")
    expect(app_a.unread(c["pin"])).to_have_attribute("data-unread", "1")
    assert handle.state == "delivered"
    app_a.open(c["pin"])
    sdk.wait_for(handle, "read")
    app_a.say("hi SDK")
    expect(app_a.state_of("hi SDK")).to_have_attribute("aria-label", "delivered")
    got = next(m for m in sdk.chats() if m.data["text"] == "hi SDK")
    sdk.read(got.id)
    expect(app_a.state_of("hi SDK")).to_have_attribute("aria-label", "read")

    # The relay dies (SIGKILL: no drain). What is sent meanwhile waits, then goes once.
    app_a.open(b["pin"])
    relay.kill()
    app_a.say("while the relay was down")
    expect(app_a.state_of("while the relay was down")).to_have_attribute("aria-label", "sending")
    late = sdk.send(a["pin"], "SDK while the relay was down")
    relay.start()
    app_a.expect_linked()
    app_b.expect_linked()
    expect(app_b.bubble("while the relay was down")).to_have_count(1)
    expect(app_a.state_of("while the relay was down")).to_have_attribute("aria-label", "read")
    sdk.wait_for(late, "delivered")
    expect(app_a.unread(c["pin"])).to_have_attribute("data-unread", "1")
    app_a.open(c["pin"])
    sdk.wait_for(late, "read")

    # The relay stops politely (SIGTERM: drain) and comes back: the pages wait as told.
    relay.terminate()
    app_b.say("after a drain")
    relay.start()
    expect(app_b.state_of("after a drain")).to_have_attribute("aria-label", "delivered")
    expect(app_a.unread(b["pin"])).to_have_attribute("data-unread", "1")

    # Nothing twice, in order, also after a reload (the history is the browser's).
    assert app_a.texts() == ["hi from the SDK", "hi SDK", "SDK while the relay was down"]
    app_a.page.reload()
    app_a.expect_linked()
    app_a.open(b["pin"])
    expect(app_b.state_of("after a drain")).to_have_attribute("aria-label", "read")
    conversation = ["hello B", "hello A", "while the relay was down", "after a drain"]
    assert app_a.texts() == conversation
    assert app_b.texts() == conversation
    assert [m.data["text"] for m in sdk.chats()] == ["hi SDK"]
    app_a.page.screenshot(path=artifacts / "conversation.png")

    # A phone's width: one pane, long words wrap, no horizontal scroll.
    app_a.say("x" * 300)
    app_b.page.set_viewport_size({"width": 375, "height": 740})
    expect(app_b.bubble("x" * 300)).to_be_visible()
    expect(app_b.page.get_by_label("Message", exact=True)).to_be_in_viewport()
    assert no_horizontal_scroll(app_b.page)
    box = app_b.bubble("x" * 300).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
    app_b.page.screenshot(path=artifacts / "conversation-375px.png")
    app_b.page.get_by_role("button", name="Back to conversations").click()
    expect(app_b.contact(a["pin"])).to_be_focused()
    assert no_horizontal_scroll(app_b.page)

    assert serious(app_a.page) == []
    assert serious(app_b.page) == []
    assert app_a.errors == [] and app_b.errors == []


def befriend(relay: RelayProc, inviter: dict[str, Any], invitee: dict[str, Any]) -> None:
    """``inviter`` invites ``invitee``, who accepts (over HTTP)."""
    url = f"{relay.url}/v1/devices"
    r = httpx.post(
        f"{url}/{inviter['pin']}/contacts",
        json={"pin": invitee["pin"]},
        headers=device_token(relay, inviter),
    )
    assert r.status_code == 202, r.text
    r = httpx.post(
        f"{url}/{invitee['pin']}/contacts/{inviter['pin']}/accept",
        headers=device_token(relay, invitee),
    )
    assert r.status_code == 200, r.text


def make_group(
    relay: RelayProc, creator: dict[str, Any], name: str, *members: dict[str, Any]
) -> str:
    """``creator``'s new group of ``members`` (its contacts); the group's id."""
    r = httpx.post(
        f"{relay.url}/v1/devices/{creator['pin']}/groups",
        json={"name": name, "members": [m["pin"] for m in members]},
        headers=device_token(relay, creator),
    )
    assert r.status_code == 201, r.text
    group: str = r.json()["group"]
    return group


def test_a_groups_messages_have_the_groups_conversation(
    relay: RelayProc, new_context: NewContext, sdk_devices: StartSdk, artifacts: Path
) -> None:
    """A group message is shown in the group's conversation (never as a one-to-one
    message of its sender), named, with its sender; a reply goes to the group, and
    counts each member's receipts."""
    a, c, d = relay.create_device("web"), relay.create_device("sdk"), relay.create_device("d")
    befriend(relay, c, a)
    befriend(relay, c, d)
    app = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    app.link_with_token(a["pin"], a["token"])
    expect(app.contact(c["pin"])).to_be_visible()
    group = make_group(relay, c, "crew", a, d)
    # The group_added notice names it at once.
    entry = app.page.locator(f'#contacts button[data-group="{group}"]')
    expect(entry).to_contain_text("crew")

    sdk = sdk_devices(relay, c)
    sdk.send(group, "hi crew")
    expect(entry.locator(".badge")).to_have_attribute("data-unread", "1")
    expect(app.unread(c["pin"])).to_have_count(0)
    entry.click()
    expect(app.page.locator("#conversation-title")).to_have_text("Group crew")
    expect(app.bubble("hi crew").locator(".from")).to_have_text(c["pin"])
    # A member sees who is in it, and can neither add nor remove.
    app.page.locator("#group-summary").click()
    expect(app.page.locator("#group-members li")).to_have_count(3)
    expect(app.page.locator("#group-members li").filter(has_text=c["pin"])).to_contain_text(
        "(creator)"
    )
    expect(app.page.locator("#group-members button")).to_have_count(0)
    expect(app.page.locator("#group-add")).to_be_hidden()
    app.say("hi all")
    # C's SDK acks it (delivered), D is offline: one member of two.
    expect(app.state_of("hi all")).to_have_attribute("aria-label", "delivered")
    expect(app.bubble("hi all").locator(".counts")).to_have_text("delivered to 1, read by 0")
    got = next(m for m in sdk.chats() if m.data["text"] == "hi all")
    assert got.data["group"] == group and got.sender == a["pin"]
    sdk.read(got.id)
    expect(app.state_of("hi all")).to_have_attribute("aria-label", "read")
    expect(app.bubble("hi all").locator(".counts")).to_have_text("delivered to 1, read by 1")
    app.page.screenshot(path=artifacts / "group.png")
    # Nothing of the group in the one-to-one conversation with its sender.
    app.open(c["pin"])
    assert app.texts() == []
    # A reload keeps the group, its name, its history and the counts.
    app.page.reload()
    app.expect_linked()
    expect(entry).to_contain_text("crew")
    entry.click()
    expect(app.page.locator("#conversation-title")).to_have_text("Group crew")
    assert app.texts() == ["hi crew", "hi all"]
    expect(app.bubble("hi all").locator(".counts")).to_have_text("delivered to 1, read by 1")
    assert serious(app.page) == []
    assert app.errors == []


def groups_of(relay: RelayProc, device: dict[str, Any]) -> dict[str, list[str]]:
    """``device``'s groups as the relay has them: id -> members."""
    r = httpx.get(
        f"{relay.url}/v1/devices/{device['pin']}/groups", headers=device_token(relay, device)
    )
    assert r.status_code == 200, r.text
    return {g["group"]: g["members"] for g in r.json()["groups"]}


def test_a_group_is_made_changed_and_left_in_the_page(
    relay: RelayProc, new_context: NewContext, artifacts: Path
) -> None:
    """The page makes a group of accepted contacts only, its creator adds and removes
    members, and leaving keeps the conversation to read but not to write; the relay
    has each change."""
    a, c, d, e = (relay.create_device(n) for n in ("web", "c", "d", "e"))
    befriend(relay, a, c)
    befriend(relay, a, d)
    r = httpx.post(  # E is invited, not accepted: not a candidate
        f"{relay.url}/v1/devices/{a['pin']}/contacts",
        json={"pin": e["pin"]},
        headers=device_token(relay, a),
    )
    assert r.status_code == 202
    app = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    page = app.page
    app.link_with_token(a["pin"], a["token"])
    expect(app.contact(d["pin"])).to_be_visible()

    page.get_by_text("New group").click()
    candidates = page.locator("#group-candidates input")
    expect(candidates).to_have_count(2)
    assert sorted(candidates.evaluate_all("bs => bs.map(b => b.value)")) == sorted(
        [c["pin"], d["pin"]]
    )
    page.get_by_label("Group name").fill("crew")
    page.get_by_role("button", name="Create the group").click()
    expect(page.locator("#status")).to_have_text("A group needs a name and at least one member.")
    assert groups_of(relay, a) == {}
    page.get_by_label(c["pin"]).check()
    page.get_by_role("button", name="Create the group").click()
    expect(page.locator("#conversation-title")).to_have_text("Group crew")
    (group,) = groups_of(relay, a)
    assert groups_of(relay, c) == {group: sorted([a["pin"], c["pin"]])}
    assert groups_of(relay, d) == {}

    summary = page.locator("#group-summary")
    expect(summary).to_have_text("Members (2)")
    summary.click()
    members = page.locator("#group-members li")
    expect(members.filter(has_text=a["pin"])).to_contain_text("(you, creator)")
    # The creator adds D (the only accepted contact left to add), then removes C.
    page.get_by_label("Add a contact to the group").select_option(d["pin"])
    page.get_by_role("button", name="Add", exact=True).click()
    expect(summary).to_have_text("Members (3)")
    expect(page.locator("#group-add")).to_be_hidden()
    assert groups_of(relay, d) == {group: sorted([a["pin"], c["pin"], d["pin"]])}
    page.get_by_role("button", name=f"Remove {c['pin']} from the group").click()
    expect(summary).to_have_text("Members (2)")
    expect(members.filter(has_text=c["pin"])).to_have_count(0)
    assert groups_of(relay, c) == {}
    app.say("just us")
    expect(app.state_of("just us")).to_have_attribute("aria-label", "sent")
    page.get_by_text("New group").click()
    page.screenshot(path=artifacts / "group-creator.png")
    page.set_viewport_size({"width": 375, "height": 740})
    assert no_horizontal_scroll(page)
    assert serious(page) == []

    # Leaving asks first; afterwards the conversation is there to read, not to write.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Leave the group").click()
    expect(page.locator("#group-left")).to_be_visible()
    expect(page.locator("#composer")).to_be_hidden()
    assert app.texts() == ["just us"]
    assert groups_of(relay, a) == {}
    assert groups_of(relay, d) == {group: [d["pin"]]}
    assert app.errors == []


def contacts_of(relay: RelayProc, device: dict[str, Any]) -> dict[str, str]:
    """``device``'s contacts as the relay has them: PIN -> state."""
    r = httpx.get(
        f"{relay.url}/v1/devices/{device['pin']}/contacts", headers=device_token(relay, device)
    )
    assert r.status_code == 200, r.text
    return {c["pin"]: c["state"] for c in r.json()["contacts"]}


def test_the_page_blocks_unblocks_and_removes_contacts(
    relay: RelayProc, new_context: NewContext
) -> None:
    """An unwanted invitation is blocked from the page (the sender's chat is then
    refused as a stranger's), unblocked; a contact is removed from its conversation
    (on both sides), invited again and blocked; each asks first, and the relay has
    each change."""
    a, b, c = (relay.create_device(n) for n in ("web", "b", "c"))
    app = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    page = app.page
    page.on("dialog", lambda dialog: dialog.accept())
    app.link_with_token(a["pin"], a["token"])
    r = httpx.post(
        f"{relay.url}/v1/devices/{b['pin']}/contacts",
        json={"pin": a["pin"]},
        headers=device_token(relay, b),
    )
    assert r.status_code == 202
    page.get_by_role("button", name=f"Block {b['pin']}").click()
    blocked = page.locator("#blocked")
    expect(blocked).to_contain_text(b["pin"])
    assert contacts_of(relay, a) == {b["pin"]: "blocked"}
    r = httpx.post(
        f"{relay.url}/v1/devices/{b['pin']}/chat",
        json={"to": a["pin"], "text": "hello?", "client_id": "b1"},
        headers=device_token(relay, b),
    )
    assert r.status_code == 403 and "is not a contact" in r.json()["detail"], r.text
    page.get_by_role("button", name=f"Unblock {b['pin']}").click()
    expect(page.locator("#blocked-box")).to_be_hidden()
    assert contacts_of(relay, a) == {}

    # C accepts an invitation of A's: the page hears of it (an accepted notice).
    befriend(relay, a, c)
    expect(app.contact(c["pin"])).to_be_visible()
    app.open(c["pin"])
    panel_state = page.locator("#contact-state")
    page.locator("#contact-summary").click()
    expect(panel_state).to_have_text(f"{c['pin']} and you are contacts.")
    page.get_by_role("button", name="Remove the contact").click()
    expect(panel_state).to_have_text(f"{c['pin']} is not a contact: messages to them are refused.")
    assert contacts_of(relay, a) == {} and contacts_of(relay, c) == {}
    page.get_by_role("button", name="Invite again").click()
    expect(panel_state).to_have_text(f"You invited {c['pin']}; no answer yet.")
    assert contacts_of(relay, c) == {a["pin"]: "pending"}
    page.locator("#contact-block").click()
    expect(page.locator("#contact-summary")).to_have_text("Contact (blocked)")
    expect(page.locator("#contact-unblock")).to_be_visible()
    assert contacts_of(relay, a) == {c["pin"]: "blocked"}
    assert serious(page) == []
    assert app.errors == []


def test_one_members_expiry_is_counted_not_shown_as_a_failed_group_message(
    relay_factory: RelayFactory, new_context: NewContext, sdk_devices: StartSdk
) -> None:
    """A group message that expires for one member (offline past its ttl) keeps its D
    from the member who got it, and says it failed for one."""
    # The largest ttl is the default one: a chat from the page lives 6 s, time
    # enough for C's SDK to get it on a busy host, and not for the page to give up.
    relay = relay_factory(extra=["--max-ttl", "6", "--sweep-interval", "0.2"])
    a, c, d = relay.create_device("web"), relay.create_device("sdk"), relay.create_device("d")
    befriend(relay, c, a)
    befriend(relay, c, d)
    group = make_group(relay, c, "crew", a, d)
    sdk_devices(relay, c)
    app = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    app.link_with_token(a["pin"], a["token"])
    entry = app.page.locator(f'#contacts button[data-group="{group}"]')
    entry.click()
    app.say("anyone?")
    expect(app.state_of("anyone?")).to_have_attribute("aria-label", "delivered")
    # D never links: its copy expires, and its failed receipt is counted.
    counts = app.bubble("anyone?").locator(".counts")
    expect(counts).to_have_text("delivered to 1, read by 0, failed for 1")
    expect(app.state_of("anyone?")).to_have_attribute("aria-label", "delivered")
    assert app.errors == []


def test_login_page(relay: RelayProc, new_context: NewContext) -> None:
    app = App(new_context(viewport={"width": 375, "height": 740}), relay)
    page = app.page
    assert serious(page) == []
    assert no_horizontal_scroll(page)
    # Keyboard only: a wrong code is said in words, in an alert.
    page.keyboard.press("Tab")  # the skip link
    page.get_by_label("Pairing code").focus()
    page.keyboard.type("AAAAA-AAAAA")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Could not link: unknown pairing code")
    # A used code says so.
    device = relay.create_device()
    code = httpx.post(
        f"{relay.url}/v1/devices/{device['pin']}/pairing", headers=relay.admin_headers()
    ).json()["code"]
    assert httpx.post(f"{relay.url}/v1/pairing", json={"code": code}).status_code == 200
    page.get_by_label("Pairing code").fill(code)
    page.get_by_label("Pairing code").press("Enter")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not link: this pairing code was used already"
    )
    assert app.errors == []


def test_page_headers(relay: RelayProc) -> None:
    page = httpx.get(f"{relay.url}/app")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy
    assert f"connect-src 'self' ws://127.0.0.1:{relay.link_port};" in policy
    assert "<script>" not in page.text and " style=" not in page.text
    assert '<link rel="icon" href="/app/icon.svg"' in page.text
    # /app/, as typed: to the page.
    slash = httpx.get(f"{relay.url}/app/")
    assert (slash.status_code, slash.headers["location"]) == (308, "/app")
    for name, media in (
        *((name, "text/javascript; charset=utf-8") for name in SCRIPTS),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ):
        r = httpx.get(f"{relay.url}/app/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"] == media
        assert r.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(f"{relay.url}/app/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(f"{relay.url}/app/other.js").status_code == 404
