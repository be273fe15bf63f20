"""Plain-data YAML loading through PyYAML's libyaml binding, with ruamel.yaml's YAML 1.2 semantics.

``load(text)`` returns what ``ruamel.yaml.YAML(typ="safe").load(text)`` returns
(dicts, lists, str, int, float, bool, None, dates), several times faster, or
raises. It raises ``Unsupported`` for every text whose result it cannot
guarantee to be the same; any exception means "ask ruamel" (``yamlread.load_fast``
does), never "the file is invalid".

How it stays identical to ruamel:

* Parsing: PyYAML's C parser (libyaml 0.2.5) composes the node tree. ruamel's
  C parser is a patched libyaml 0.1.7; the two differ only in flow context
  (``[...]``, ``{...}``): libyaml 0.2.5 accepts ':' and '?' inside plain
  scalars there and a tag directly followed by ','. Such nodes raise
  Unsupported. Directives (``%YAML``, ``%TAG``) also do.
* Resolving and constructing scalars: ruamel's own code. A plain scalar is
  resolved with ruamel's YAML 1.2 ``VersionedResolver`` and built by ruamel's
  ``SafeConstructor`` (so ``0755`` is 755, ``yes`` a string, ``1:20`` a string,
  ``2001-12-14`` a date, ``.NaN`` ruamel's one NaN object); results are cached
  per value. Plain scalars whose first character no YAML 1.2 resolver looks at
  (most of them) are strings without asking.
* Collections: built here. Mappings refuse duplicate keys (ruamel raises
  DuplicateKeyError), non-scalar keys and anything recursive; merge keys
  (``<<``) follow ruamel's SafeConstructor exactly (merged pairs first, later
  merge sources lose to earlier ones, own keys win, no duplicate check in a
  mapping with merged pairs).
* Explicit tags: ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!timestamp``, ``!!binary`` on scalars (built by ruamel's constructor) and
  ``!!map``/``!!seq`` on collections; any other tag is Unsupported.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
from typing import Any

from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.nodes import ScalarNode as _RuamelScalarNode
from ruamel.yaml.resolver import VersionedResolver
from yaml._yaml import CParser  # PyYAML's libyaml binding; ImportError means no fast path
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from deployer.errors import FastYamlUnsupported as Unsupported

__all__ = ["Unsupported", "load"]


_T = "tag:yaml.org,2002:"
_STR = _T + "str"
_SEQ = _T + "seq"
_MAP = _T + "map"
_MERGE = _T + "merge"
_VALUE = _T + "value"
# Scalar tags whose ruamel SafeConstructor result is an immutable plain value.
_SCALAR_TAGS = frozenset(_T + t for t in ("null", "bool", "int", "float", "str", "timestamp", "binary"))

# What the composer stores as a node's tag when the document gives none (or the
# non-specific '!'): resolution happens here, with ruamel's resolver.
_PLAIN = "plain"  # resolve implicitly (ruamel: implicit[0] true)
_QUOTED = "quoted"  # a string
_BANG = "bang"  # an empty scalar tagged '!': a string, and the sign of a tag right before ',' in flow context
_COLLECTION = "collection"  # untagged sequence or mapping

_DIRECTIVE = re.compile("(?:^|[\r\n\x85\u2028\u2029\ufeff])%")

# ruamel's YAML 1.2 resolver and safe constructor, driven directly.
_resolver = VersionedResolver(version=(1, 2))
_implicit = _resolver.versioned_resolver  # first character -> [(tag, regexp)]
# A plain scalar whose first character has no resolver is a string (ruamel looks resolvers up by first character).
if None in _implicit:
    raise ImportError("ruamel.yaml has an implicit resolver for any first character: fastyaml does not know it")
_RESOLVED_FIRST = frozenset(_implicit)


class _ConstructorLoader:
    """The little of a loader that SafeConstructor's scalar constructors use."""

    def __init__(self) -> None:
        self._resolver = _resolver
        self._constructor = None


_constructor = SafeConstructor(loader=_ConstructorLoader())
_constructor.allow_duplicate_keys = False

_plain_cache: dict[str, Any] = {}
_PLAIN_CACHE_MAX = 4096
_NOT_A_VALUE = object()  # cached for '<<' and '=': merge / value tags are not scalar values


def _construct_scalar(tag: str, value: str, style: str | None) -> Any:
    """ruamel's SafeConstructor result for a scalar node with this tag (an int too long to print: Unsupported)."""
    result = _constructor.construct_non_recursive_object(_RuamelScalarNode(tag, value, style=style))
    # An int with more bits may have more decimal digits than Python converts to a string
    # (sys.get_int_max_str_digits): the loader refuses those, with their line.
    if result.__class__ is int and result.bit_length() > 3 * sys.get_int_max_str_digits() > 0:
        raise Unsupported("an int that may be too long to write in decimal")
    return result


def _resolve_plain(value: str) -> Any:
    """A plain (implicitly typed) scalar as ruamel's YAML 1.2 safe loader builds it."""
    try:
        result = _plain_cache[value]
    except KeyError:
        tag = str(_resolver.resolve(_RuamelScalarNode, value, (True, False)))
        if tag == _STR:
            result = value
        elif tag in _SCALAR_TAGS:
            result = _construct_scalar(tag, value, "")
        else:
            result = _NOT_A_VALUE
        if len(_plain_cache) >= _PLAIN_CACHE_MAX:
            _plain_cache.clear()
        _plain_cache[value] = result
    if result is _NOT_A_VALUE:
        raise Unsupported(f"plain scalar {value!r} is not a value")
    return result


def _key_kind(value: str) -> str:
    """The tag ruamel resolves a plain key to, for the two keys that are not values."""
    return str(_resolver.resolve(_RuamelScalarNode, value, (True, False)))


# The plain keys that mean something in a mapping: '<<' merges, '=' is the string '='.
_MERGE_KEYS = frozenset(k for k in ("<<",) if _key_kind(k) == _MERGE)
_VALUE_KEYS = frozenset(k for k in ("=",) if _key_kind(k) == _VALUE)


class _Parser(CParser):
    """libyaml's parser and composer; tags are left for ``_Builder`` to resolve."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            if implicit[0]:
                return _PLAIN
            return _QUOTED if implicit[1] else _BANG
        return _COLLECTION

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


_BUILDING = object()  # in _Builder.built while a collection is being built: met again, it is recursive
_FLOW_COLON = "':' or '?' in a plain scalar in flow context"


class _Builder:
    """Python data from a composed node tree, as ruamel's SafeConstructor builds it.

    ``in_flow`` is whether a node sits in flow context, that is whether its
    parent collection is a flow one: what libyaml 0.2.5 reads differently
    there is refused (see the module docstring).
    """

    def __init__(self) -> None:
        self.built: dict[int, Any] = {}  # id(collection node) -> its data: aliases share it
        self.flat: dict[int, tuple[list, bool]] = {}  # id(mapping node) -> flatten(node)
        self.flattening: set[int] = set()

    def scalar(self, node: Any, in_flow: bool) -> Any:
        tag = node.tag
        value = node.value
        if tag is _PLAIN:
            if in_flow and (":" in value or "?" in value):
                raise Unsupported(_FLOW_COLON)
            if value and value[0] not in _RESOLVED_FIRST:
                return value
            return _resolve_plain(value)
        if tag is _QUOTED:
            return value
        if in_flow:
            raise Unsupported("tag in flow context")
        if tag is _BANG or tag == _STR:
            return value
        if tag in _SCALAR_TAGS:
            return _construct_scalar(tag, value, node.style)
        raise Unsupported(f"tag {tag}")

    def build(self, node: Any, in_flow: bool = False) -> Any:
        if node.__class__ is ScalarNode:
            return self.scalar(node, in_flow)
        return self.collection(node)

    def collection(self, node: Any) -> Any:
        built = self.built
        key = id(node)
        data = built.get(key)
        if data is not None:
            if data is _BUILDING:
                raise Unsupported("recursive structure")
            return data
        built[key] = _BUILDING
        cls = node.__class__
        tag = node.tag
        flow = node.flow_style is True
        if cls is SequenceNode:
            if tag is not _COLLECTION and tag != _SEQ:
                raise Unsupported(f"tag {tag} on a sequence")
            data = []
            append = data.append
            for child in node.value:
                # the common scalars inline; the rest as scalar() does
                if child.__class__ is not ScalarNode:
                    append(self.collection(child))
                    continue
                tag = child.tag
                value = child.value
                if tag is _PLAIN and not flow and value and value[0] not in _RESOLVED_FIRST:
                    append(value)
                elif tag is _QUOTED:
                    append(value)
                else:
                    append(self.scalar(child, flow))
        elif cls is MappingNode:
            if tag is not _COLLECTION and tag != _MAP:
                raise Unsupported(f"tag {tag} on a mapping")
            data = self.mapping(node, flow)
        else:
            raise Unsupported(f"node {cls.__name__}")
        built[key] = data
        return data

    def mapping(self, node: Any, flow: bool) -> dict:
        data: dict = {}
        size = 0
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                raise Unsupported("a sequence or mapping as a key")
            tag = key_node.tag
            key = key_node.value
            if tag is _PLAIN:
                if flow and (":" in key or "?" in key):
                    raise Unsupported(_FLOW_COLON)
                if not key or key[0] in _RESOLVED_FIRST:
                    if key in _MERGE_KEYS:
                        return self.merged_mapping(node)
                    if key not in _VALUE_KEYS:  # ruamel's flatten_mapping makes a '=' key the string '='
                        key = _resolve_plain(key)
            elif tag is not _QUOTED:
                key = self.scalar(key_node, flow)
            if value_node.__class__ is ScalarNode:
                tag = value_node.tag
                value = value_node.value
                if tag is _PLAIN and not flow and value and value[0] not in _RESOLVED_FIRST:
                    data[key] = value
                elif tag is _QUOTED:
                    data[key] = value
                else:
                    data[key] = self.scalar(value_node, flow)
            else:
                data[key] = self.collection(value_node)
            size += 1
            if len(data) != size:
                raise Unsupported(f"duplicate key {key!r}")  # ruamel raises DuplicateKeyError
        return data

    def merged_mapping(self, node: Any) -> dict:
        triples, merged = self.flatten(node)
        data: dict = {}
        for key_node, value_node, in_flow in triples:
            if key_node.__class__ is not ScalarNode:
                raise Unsupported("a sequence or mapping as a key")
            if key_node.tag is _PLAIN and key_node.value in _VALUE_KEYS:
                key = key_node.value
            else:
                key = self.scalar(key_node, in_flow)
            if not merged and key in data:
                raise Unsupported(f"duplicate key {key!r}")  # ruamel raises DuplicateKeyError
            data[key] = self.build(value_node, in_flow)
        return data

    def flatten(self, node: Any) -> tuple[list, bool]:
        """The mapping's (key, value, in flow context) triples, merge keys replaced by the merged pairs.

        As ruamel's SafeConstructor.flatten_mapping: merged pairs come first,
        those of a later mapping in a merge list before those of an earlier one
        (so that the earlier wins), and the mapping's own pairs last. Returns
        (triples, merged): merged is true when merged pairs were added, and
        then ruamel checks no key of this mapping for duplicates.
        """
        key = id(node)
        try:
            return self.flat[key]
        except KeyError:
            pass
        if key in self.flattening:
            raise Unsupported("recursive merge")
        self.flattening.add(key)
        flow = node.flow_style is True
        merge: list = []
        own: list = []
        for key_node, value_node in node.value:
            if not (key_node.__class__ is ScalarNode and key_node.tag is _PLAIN and key_node.value in _MERGE_KEYS):
                own.append((key_node, value_node, flow))
                continue
            if merge:
                raise Unsupported("duplicate merge key")  # ruamel raises DuplicateKeyError
            if value_node.__class__ is MappingNode:
                merge.extend(self.flatten(value_node)[0])
            elif value_node.__class__ is SequenceNode:
                sources = []
                for sub in value_node.value:
                    if sub.__class__ is not MappingNode:
                        raise Unsupported("merge of a non-mapping")
                    sources.append(self.flatten(sub)[0])
                for sub_triples in reversed(sources):
                    merge.extend(sub_triples)
            else:
                raise Unsupported("merge of a non-mapping")
        self.flattening.discard(key)
        result = (merge + own, True) if merge else (own, False)
        self.flat[key] = result
        return result


# The cyclic garbage collector is paused while a text is loaded: parsing allocates
# hundreds of short-lived container objects per file (nodes, marks, pairs) and
# none of them form cycles (recursive aliases are refused), so reference counting
# frees them all; left on, the collector runs several times per file and, in a
# process holding a large repository, each full collection walks all of it (that
# was about half the loading time of 1,000 nodes). Pauses nest across threads: the
# collector is enabled again when the last load ends, if it was enabled before.
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


def _pause_gc() -> None:
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1


def _resume_gc() -> None:
    global _gc_pauses
    with _gc_lock:
        _gc_pauses -= 1
        if _gc_pauses == 0 and _gc_was_enabled:
            gc.enable()


def load(text: str) -> Any:
    """The single document in ``text`` as ruamel's YAML 1.2 safe loader returns it, or an exception."""
    if not isinstance(text, str):
        raise Unsupported("not a str")
    if "%" in text and _DIRECTIVE.search(text):
        raise Unsupported("directive")
    _pause_gc()
    try:
        parser = _Parser(text)
        try:
            node = parser.get_single_node()
        finally:
            parser.dispose()
        if node is None:
            return None
        return _Builder().build(node)
    finally:
        _resume_gc()
