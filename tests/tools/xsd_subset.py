"""Validate XML against the small XSD subset tests/tools/junit-10.xsd uses.

No XML-schema library is a dependency, so this reads the schema itself: named
top-level elements, each a ``complexType`` with a ``sequence`` of element refs
(``minOccurs``/``maxOccurs``, order kept), attributes (``use="required"``, a type
that may be a pattern-restricted simple type), ``mixed`` text; or a text-only
element (``type="xs:string"``). Anything else in the schema fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

XS = "{http://www.w3.org/2001/XMLSchema}"


@dataclass
class Decl:
    name: str
    children: list[tuple[str, int, float]] = field(default_factory=list)
    attributes: dict[str, tuple[bool, str]] = field(default_factory=dict)
    mixed: bool = False
    text_only: bool = False


@dataclass
class Schema:
    elements: dict[str, Decl]
    patterns: dict[str, re.Pattern[str]]

    @classmethod
    def load(cls, path: Path) -> Schema:
        root = ET.parse(path).getroot()
        patterns: dict[str, re.Pattern[str]] = {}
        elements: dict[str, Decl] = {}
        for node in root:
            if node.tag == f"{XS}simpleType":
                pattern = node.find(f"{XS}restriction/{XS}pattern")
                assert pattern is not None, f"unsupported simpleType {node.get('name')}"
                patterns[node.attrib["name"]] = re.compile(pattern.attrib["value"])
            elif node.tag == f"{XS}element":
                decl = Decl(node.attrib["name"])
                if node.get("type") == "xs:string":
                    decl.text_only = True
                else:
                    ctype = node.find(f"{XS}complexType")
                    assert ctype is not None, f"unsupported element {decl.name}"
                    decl.mixed = ctype.get("mixed") == "true"
                    for part in ctype:
                        if part.tag == f"{XS}sequence":
                            for ref in part:
                                assert ref.tag == f"{XS}element" and "ref" in ref.attrib
                                high = ref.get("maxOccurs", "1")
                                decl.children.append((
                                    ref.attrib["ref"], int(ref.get("minOccurs", "1")),
                                    float("inf") if high == "unbounded" else int(high)))
                        elif part.tag == f"{XS}attribute":
                            decl.attributes[part.attrib["name"]] = (
                                part.get("use") == "required", part.get("type", "xs:string"))
                        else:
                            raise AssertionError(f"unsupported schema part {part.tag}")
                elements[decl.name] = decl
            elif node.tag == f"{XS}complexType":
                continue  # a named type no element here uses
            else:
                raise AssertionError(f"unsupported schema node {node.tag}")
        return cls(elements, patterns)

    def validate(self, element: ET.Element, path: str = "") -> list[str]:
        """Every violation, as ``path: problem``; empty when valid."""
        where = f"{path}/{element.tag}"
        decl = self.elements.get(element.tag)
        if decl is None:
            return [f"{where}: element not in the schema"]
        problems = []
        if decl.text_only:
            if len(element) or element.attrib:
                problems.append(f"{where}: must hold text only")
            return problems
        for name, value in element.attrib.items():
            if name not in decl.attributes:
                problems.append(f"{where}: attribute {name} not allowed")
                continue
            kind = decl.attributes[name][1]
            if kind in self.patterns and not self.patterns[kind].fullmatch(value):
                problems.append(f"{where}: {name}={value!r} is not a {kind}")
        for name, (required, _) in decl.attributes.items():
            if required and name not in element.attrib:
                problems.append(f"{where}: required attribute {name} missing")
        if (element.text or "").strip() and not decl.mixed:
            problems.append(f"{where}: text not allowed")
        children = list(element)
        i = 0
        for name, low, high in decl.children:
            count = 0
            while i < len(children) and children[i].tag == name and count < high:
                problems += self.validate(children[i], where)
                i += 1
                count += 1
            if count < low:
                problems.append(f"{where}: needs at least {low} {name}")
        if i < len(children):
            problems.append(f"{where}: unexpected {children[i].tag} at position {i}")
        return problems
