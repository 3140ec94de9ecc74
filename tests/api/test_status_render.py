"""api/status.py's renderers without a relay: what an operator writes is escaped in
the HTML page and the Atom feed, and characters XML 1.0 cannot hold are replaced."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from pinrelay.api.status import render_atom, render_html
from pinrelay.core.incidents import add_update, open_incident, resolve

NOW = 1_800_000_000_000
ATOM = "{http://www.w3.org/2005/Atom}"
TEXT = '<i>x</i> & "y" \ufffe\uffff'


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.data: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def test_texts_are_escaped_and_fit_for_xml() -> None:
    i = add_update(open_incident("I000000000001", "store", "critical", TEXT, NOW), "b", NOW + 1)
    done = resolve(open_incident("I000000000002", "links", "minor", "a", NOW - 5), None, NOW)
    page = render_html([i, done], NOW + 2)
    parsed = _Text()
    parsed.feed(page)
    assert TEXT in "".join(parsed.data) and "i" not in parsed.tags and "script" not in parsed.tags
    feed = ET.fromstring(render_atom([i, done], NOW + 2))  # noqa: S314 (made here)
    entries = feed.findall(f"{ATOM}entry")
    ids = [e.findtext(f"{ATOM}id") for e in entries]
    assert ids == [
        "urn:pinrelay:incident:I000000000001:1",
        "urn:pinrelay:incident:I000000000001:0",
        "urn:pinrelay:incident:I000000000002:0",
    ]
    assert entries[1].findtext(f"{ATOM}content") == '<i>x</i> & "y" \ufffd\ufffd'
    empty = ET.fromstring(render_atom([], NOW))  # noqa: S314
    assert empty.findall(f"{ATOM}entry") == [] and empty.findtext(f"{ATOM}updated")
