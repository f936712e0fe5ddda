"""XML safety: entity declarations are refused before parsing, in any encoding."""

from __future__ import annotations

import pytest

from exporter.protocol import safe_xml as xmlsafe


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><a>&lol2;</a>',
        b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><a>&xxe;</a>',
        b"<!doctype a><a/>",
    ],
)
def test_entity_declarations_are_refused_before_parsing(body: bytes) -> None:
    with pytest.raises(xmlsafe.UnsafeXML, match="DOCTYPE or an ENTITY"):
        xmlsafe.parse(body)


def test_a_utf16_doctype_is_refused_too() -> None:
    body = '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'.encode("utf-16")
    with pytest.raises(xmlsafe.UnsafeXML, match="DOCTYPE or an ENTITY"):
        xmlsafe.parse(body)
