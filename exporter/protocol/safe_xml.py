"""Parsing XML from servers the exporter does not trust.

Exchange never sends a DOCTYPE in EWS or Autodiscover replies, so any document that declares one is
refused before parsing: that rules out entity expansion ("billion laughs") and external entities
(XXE) whatever the XML library would do with them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnsafeXML(ValueError):
    """The document is not well-formed XML, or declares a DOCTYPE/ENTITY."""


def parse(body: bytes) -> ET.Element:
    # Dropping NUL bytes makes a UTF-16 document's ASCII markup searchable too.
    if _DECLARATIONS.search(body) or _DECLARATIONS.search(body.replace(b"\x00", b"")):
        raise UnsafeXML("the document declares a DOCTYPE or an ENTITY, which Exchange never does")
    try:
        return ET.fromstring(body)
    except ET.ParseError as err:
        raise UnsafeXML(f"not well-formed XML: {err}") from None


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]
