"""Role inheritance: the policy's `g` lines plus the roles a caller's token carries.

Casbin's default role manager answers `g(a, b)` by a breadth-first walk from `a` that stops after 10
levels, so `b` counts only within 9 links. authcar refuses a policy in which any role reaches another
only through 9 or more links; within what remains, every walk finishes early, and the roles one
name reaches can be computed once per policy. A caller's token roles are links from the subject
(`g, <subject>, <role>` for this request only), so the subject reaches them and all they reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Casbin's RoleManager(10): the name itself plus 9 levels of links.
MAX_HIERARCHY_LEVEL = 10
# Links a policy's own roles may need: one link fewer, because a token role adds one below them.
MAX_POLICY_DEPTH = MAX_HIERARCHY_LEVEL - 2


class RoleGraph:
    """One `g`-type's links, with every name's reachable set computed up front."""

    __slots__ = ("parents", "reach")

    def __init__(self, links: Iterable[tuple[str, str]]) -> None:
        parents: dict[str, set[str]] = {}
        for child, parent in links:
            parents.setdefault(child, set()).add(parent)
        self.parents: Mapping[str, frozenset[str]] = {name: frozenset(p) for name, p in parents.items()}
        # name -> names it reaches, itself included; absent names reach only themselves.
        self.reach: dict[str, frozenset[str]] = {}

    def check_depth(self) -> list[str]:
        """Fill `reach`; list the names reachable only through more links than Casbin follows."""
        problems: list[str] = []
        for start in self.parents:
            seen = {start}
            frontier = {start}
            depth = 0
            while frontier:
                depth += 1
                frontier = {parent for name in frontier for parent in self.parents.get(name, ())} - seen
                if depth > MAX_POLICY_DEPTH and frontier:
                    far = sorted(frontier)[0]
                    problems.append(
                        f"role inheritance too deep: {start!r} reaches {far!r} only through {depth} links "
                        f"(at most {MAX_POLICY_DEPTH}: Casbin stops after {MAX_HIERARCHY_LEVEL} levels, "
                        "one of them the link from a caller to a token role)"
                    )
                    break
                seen |= frontier
            self.reach[start] = frozenset(seen)
        return problems

    def has_link(self, name: object, role: object) -> bool:
        if name == role:
            return True
        reach = self.reach.get(name) if isinstance(name, str) else None
        return reach is not None and role in reach


class RequestRoles:
    """`g(a, b)` for one request: the policy's links plus subject -> each token role."""

    __slots__ = ("_closure", "graph", "roles", "subject")

    def __init__(self, graph: RoleGraph, subject: str, roles: tuple[str, ...]) -> None:
        self.graph = graph
        self.subject = subject
        self.roles = roles
        self._closure: frozenset[str] | None = None

    def closure(self) -> frozenset[str]:
        """Every name the subject reaches, itself included."""
        if self._closure is None:
            reach = self.graph.reach
            names = set(reach.get(self.subject, (self.subject,)))
            for role in self.roles:
                names.update(reach.get(role, (role,)))
            self._closure = frozenset(names)
        return self._closure

    def has_link(self, name: object, role: object) -> bool:
        if name == self.subject:
            return role in self.closure()
        reach = self.graph.reach.get(name) if isinstance(name, str) else None
        if reach is None or self.subject not in reach or not self.roles:
            return name == role or (reach is not None and role in reach)
        # `name` reaches the subject through policy links: walk as Casbin does, level by level.
        return self._bounded_walk(name, role)

    def _bounded_walk(self, name: object, role: object) -> bool:
        frontier: set[object] = {name}
        for _level in range(MAX_HIERARCHY_LEVEL):
            if role in frontier:
                return True
            following: set[object] = set()
            for current in frontier:
                following.update(self.graph.parents.get(current, ()))  # type: ignore[call-overload]
                if current == self.subject:
                    following.update(self.roles)
            if not following:
                return False
            frontier = following
        return False
