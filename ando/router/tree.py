"""A compressed radix tree answering "which stored keys are prefixes of this string?".

This is the one question APISIX's router (lua-resty-radixtree, over antirez's rax) asks of its
tree: it seeks the request path, then walks *up*, visiting every stored key that is a prefix of
the path, longest first.  Prefix routes (``/foo*``, ``/foo/*``) and parameter routes
(``/user/:id``, stored under ``/user/``) live at those keys; so does every wildcard host
(``*.example.com`` is stored reversed, as ``moc.elpmaxe.``, and the reversed request host is
walked).

The tree is built once, then frozen.  After :meth:`RadixTree.freeze`, every node that holds a
value links (``up``) to its nearest ancestor that holds one, so a lookup is a single walk down
the string followed by following ``up`` links: no list is built, nothing is sorted, and the cost
depends on the length of the string and the number of branch points on it, not on how many keys
are stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Node", "RadixTree"]

V = TypeVar("V")


class Node(Generic[V]):
    """One node: the edge ``label`` that leads to it, its children and its value.

    ``children`` is keyed by the first character of each child's label (in a compressed radix
    tree no two children share one), so choosing the branch is one dict lookup.
    """

    __slots__ = ("children", "key", "label", "up", "value")

    def __init__(self, label: str, key: str) -> None:
        self.label = label
        self.key = key  # the whole key from the root; kept for debugging and explain output
        self.children: dict[str, Node[V]] = {}
        self.value: V | None = None
        self.up: Node[V] | None = None  # nearest ancestor with a value; set by freeze()

    def __repr__(self) -> str:
        return f"Node({self.key!r}, value={self.value!r})"


class RadixTree(Generic[V]):
    """A mapping from string keys to values that finds every key that prefixes a string.

    Build it with :meth:`setdefault`/:meth:`get`, call :meth:`freeze` once, then query it with
    :meth:`deepest` (the hot path) or :meth:`prefixes_of` (convenience, cold path).
    """

    __slots__ = ("_frozen", "_root", "_size")

    def __init__(self) -> None:
        self._root: Node[V] = Node("", "")
        self._frozen = False
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _find_or_create(self, key: str) -> Node[V]:
        """Return the node for ``key``, splitting edges as needed (build time only)."""
        if self._frozen:
            raise RuntimeError("RadixTree is frozen; build a new one")
        node = self._root
        pos = 0
        end = len(key)
        while pos < end:
            child = node.children.get(key[pos])
            if child is None:
                leaf: Node[V] = Node(key[pos:], key)
                node.children[key[pos]] = leaf
                return leaf
            label = child.label
            # Length of the common prefix of the label and the rest of the key.
            n = 0
            limit = min(len(label), end - pos)
            while n < limit and label[n] == key[pos + n]:
                n += 1
            if n == len(label):
                node = child
                pos += n
                continue
            # Split the edge: node -> mid(label[:n]) -> child(label[n:]).
            mid: Node[V] = Node(label[:n], key[: pos + n])
            child.label = label[n:]
            mid.children[child.label[0]] = child
            node.children[key[pos]] = mid
            node = mid
            pos += n
        return node

    def setdefault(self, key: str, default: V) -> V:
        """Return the value stored at ``key``, storing ``default`` there first if it has none."""
        node = self._find_or_create(key)
        if node.value is None:
            node.value = default
            self._size += 1
        return node.value

    def get(self, key: str) -> V | None:
        """Return the value stored at exactly ``key``, or None."""
        node = self._root
        pos = 0
        end = len(key)
        while pos < end:
            child = node.children.get(key[pos])
            if child is None or not key.startswith(child.label, pos):
                return None
            pos += len(child.label)
            node = child
        return node.value

    def nodes(self) -> Iterator[Node[V]]:
        """Every node that holds a value (depth first), for build-time passes over the values."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.value is not None:
                yield node
            stack.extend(node.children.values())

    def freeze(self) -> None:
        """Link every valued node to its nearest valued ancestor; no more inserts after this.

        Precomputing the links is what lets a lookup return one node and let the caller walk
        the chain, instead of collecting the matching prefixes into a fresh list per request.
        """
        stack: list[tuple[Node[V], Node[V] | None]] = [(self._root, None)]
        while stack:
            node, nearest = stack.pop()
            node.up = nearest
            below = node if node.value is not None else nearest
            for child in node.children.values():
                stack.append((child, below))
        self._frozen = True

    def deepest(self, s: str) -> Node[V] | None:
        """The valued node with the longest key that is a prefix of ``s`` (``s`` itself included).

        Follow ``.up`` from the result to visit every other such node, longest key first —
        the order in which lua-resty-radixtree tries prefix routes.
        """
        node = self._root
        best = node if node.value is not None else None
        children = node.children
        pos = 0
        end = len(s)
        while pos < end and children:
            child = children.get(s[pos])
            if child is None:
                break
            label = child.label
            if not s.startswith(label, pos):
                break
            pos += len(label)
            if child.value is not None:
                best = child
            children = child.children
        return best

    def prefixes_of(self, s: str) -> Iterator[Node[V]]:
        """Every valued node whose key prefixes ``s``, longest first (explain, tests)."""
        node = self.deepest(s)
        while node is not None:
            yield node
            node = node.up
