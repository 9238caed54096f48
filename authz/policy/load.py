"""Files -> Kubernetes-style resources, each remembering its file and line.

YAML is composed into nodes first so every resource, and every field inside it,
can be reported by line. JSON files are YAML too. Multi-document files and
``kind: List`` objects are flattened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
import yaml

from authz.policy.errors import Location, PolicyError, PolicyErrors

__all__ = [
    "LineMap", "Resource", "iter_paths", "iter_text", "load_paths", "parse_text", "policy_files",
]

POLICY_SUFFIXES = (".yaml", ".yml", ".json")
EMPTY_FILE = ("the file is empty; an emptied file is never read as 'no policies' (a "
              "truncating editor or a half-finished copy would remove its protection): "
              "delete the file, or its policies, to remove them")
"""An empty or whitespace-only file is an error, not a file without policies: what
the file protected stays in force until it is removed on purpose."""
log = structlog.get_logger("authz.policy")


@dataclass(frozen=True, slots=True)
class Resource:
    """One parsed object: ``spec`` is plain data, ``lines`` maps field paths to lines."""

    api_version: str
    kind: str
    name: str
    namespace: str
    location: Location
    spec: Mapping[str, Any]
    metadata: Mapping[str, Any]
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """``"spec.rules[0].from"`` -> line, for error messages (a ``LineMap`` when loaded
    from text: built only if an error needs it)."""

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def where(self, path: str) -> Location:
        """The location of ``path`` (or of its closest recorded parent)."""
        probe = path
        while probe:
            if probe in self.lines:
                return Location(self.location.file, self.lines[probe])
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return self.location

    def error(self, path: str, message: str) -> PolicyError:
        return PolicyError(message, self.where(path), self.ref, path)


def _to_data(node: yaml.Node, path: str, lines: dict[str, int],
             constructor: yaml.SafeLoader) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            child = f"{path}.{key}" if path else str(key)
            out[str(key)] = _to_data(value_node, child, lines, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(item, f"{path}[{i}]", lines, constructor)
                for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


class LineMap(Mapping[str, int]):
    """Field path -> line of one document, built from the file's text on first use.

    Only error messages read lines. Keeping a dict per resource cost about 5 KB per
    policy (half of a loaded policy's memory); the text is shared by every
    resource of its file and re-read only when something is wrong.
    """

    __slots__ = ("_document", "_lines", "_prefix", "_text")

    def __init__(self, text: str, document: int, prefix: str = "") -> None:
        self._text, self._document, self._prefix = text, document, prefix
        self._lines: dict[str, int] | None = None

    def _built(self) -> dict[str, int]:
        if self._lines is None:
            lines: dict[str, int] = {}
            for i, (node, _line) in enumerate(_documents(self._text, "")):
                if i == self._document:
                    _document_data(node, lines)
                    break
            cut = len(self._prefix)
            self._lines = {k[cut:]: v for k, v in lines.items() if k.startswith(self._prefix)}
        return self._lines

    def item(self, prefix: str) -> LineMap:
        """The map of a ``List`` item, e.g. ``items[3].``."""
        return LineMap(self._text, self._document, self._prefix + prefix)

    def __getitem__(self, path: str) -> int:
        return self._built()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def _document_data(node: yaml.Node, lines: dict[str, int]) -> Any:
    """Plain data of one document. A constructor per document: it memoizes every
    node it builds, and a shared one kept every policy's node tree alive forever
    (12 KB per policy, more with every reload)."""
    constructor = yaml.SafeLoader("")
    try:
        return _to_data(node, "", lines, constructor)
    finally:
        constructor.dispose()
# libyaml's scanner is ~10x faster than PyYAML's pure-Python one and still gives
# node marks (lines); PyYAML wheels ship it, but a source build may not.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(text: str, file: str) -> Iterator[tuple[yaml.Node, int]]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node, node.start_mark.line + 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PolicyError(f"invalid YAML: {exc.problem or exc}", Location(file, line)) from exc
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError): no mark
        raise PolicyError(f"invalid YAML: {exc}", Location(file, 1)) from exc
    finally:
        loader.dispose()


def _is_object(data: Any) -> bool:
    """Kubernetes objects have apiVersion or kind; other documents (an Envoy config
    kept beside the policies, say) are not ours to read."""
    return not isinstance(data, dict) or "kind" in data or "apiVersion" in data


def _resource(data: Any, lines: Mapping[str, int], loc: Location) -> Resource:
    if not isinstance(data, dict):
        raise PolicyError("a resource must be a mapping with apiVersion and kind", loc)
    kind, api_version = data.get("kind"), data.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        raise PolicyError("missing or invalid 'kind'", loc, field="kind")
    if not isinstance(api_version, str) or not api_version:
        raise PolicyError("missing or invalid 'apiVersion'", loc, kind, "apiVersion")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise PolicyError("'metadata' must be a mapping", loc, kind, "metadata")
    name = metadata.get("name")
    if kind != "List" and (not isinstance(name, str) or not name):
        raise PolicyError("missing 'metadata.name'", loc, kind, "metadata.name")
    namespace = metadata.get("namespace") or ""
    if not isinstance(namespace, str):
        raise PolicyError("'metadata.namespace' must be a string", loc, kind, "metadata.namespace")
    spec = data.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise PolicyError("'spec' must be a mapping", loc, f"{kind} {name}", "spec")
    return Resource(
        api_version=api_version,
        kind=kind,
        name=str(name or ""),
        namespace=namespace,
        location=loc,
        spec=spec,
        metadata=metadata,
        lines=lines if isinstance(lines, LineMap) else MappingProxyType(dict(lines)),
    )


def parse_text(text: str, file: str, default_namespace: str = "default") -> list[Resource]:
    """Parse one file's text. ``default_namespace`` fills in a missing namespace."""
    return list(iter_text(text, file, default_namespace))


def iter_text(text: str, file: str, default_namespace: str = "default") -> Iterator[Resource]:
    """``parse_text`` one document at a time, so a consumer can compile each resource
    and drop it: 10,000 policies in one file never sit in memory as specs at once."""
    for document, (node, line) in enumerate(_documents(text, file)):
        lines: dict[str, int] = {}
        try:
            data = _document_data(node, lines)
        except yaml.YAMLError as exc:  # an unknown tag such as ``!x``
            raise PolicyError(f"invalid YAML: {exc}", Location(file, line)) from exc
        except RecursionError as exc:  # ``&a [*a]``, or thousands of levels
            raise PolicyError("invalid YAML: an alias refers to itself, or nesting is too "
                              "deep", Location(file, line)) from exc
        if data is None:
            continue
        if not _is_object(data):
            log.debug("document_ignored", file=file, line=line, why="no apiVersion or kind")
            continue
        line_map = LineMap(text, document)
        res = _resource(data, line_map, Location(file, line))
        if res.kind == "List":
            items = data.get("items") or []
            if not isinstance(items, list):
                raise PolicyError("'items' of a List must be a list", res.location, "List", "items")
            for i, item in enumerate(items):
                item_loc = Location(file, lines.get(f"items[{i}]", line))
                item_lines = line_map.item(f"items[{i}].")
                yield _with_namespace(_resource(item, item_lines, item_loc), default_namespace)
        else:
            yield _with_namespace(res, default_namespace)


def _with_namespace(res: Resource, default_namespace: str) -> Resource:
    if res.namespace:
        return res
    return Resource(
        res.api_version, res.kind, res.name, default_namespace, res.location,
        res.spec, res.metadata, res.lines,
    )


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively) in a stable order.

    Hidden entries are skipped: Kubernetes mounts a ConfigMap as ``..data`` and
    ``..<timestamp>`` folders plus symlinks to them, so only the visible links
    count and nothing is read twice.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in POLICY_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise PolicyError(f"policy path does not exist: {path}")
    return found


def load_paths(paths: Iterable[str | Path], default_namespace: str = "default") -> list[Resource]:
    """Load every resource; raise ``PolicyErrors`` listing every file that failed."""
    errors: list[PolicyError] = []
    resources = list(iter_paths(paths, default_namespace, errors))
    if errors:
        raise PolicyErrors(errors)
    return resources


def iter_paths(paths: Iterable[str | Path], default_namespace: str,
               errors: list[PolicyError]) -> Iterator[Resource]:
    """Resources of every file, one at a time; problems are appended to ``errors``
    (the caller raises them once it has seen everything, to report them all)."""
    try:
        files = policy_files(paths)
    except PolicyError as exc:
        errors.append(exc)
        return
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
            if not text.strip():
                raise PolicyError(EMPTY_FILE, Location(str(file), 1))
            yield from iter_text(text, str(file), default_namespace)
        except PolicyError as exc:
            errors.append(exc)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(PolicyError(f"cannot read: {exc}", Location(str(file), 1)))
