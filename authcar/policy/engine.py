"""Compile a Casbin model and policy into a `CompiledPolicy` that decides in microseconds.

Decisions agree with `casbin.Enforcer.enforce_ex` (allowed, and the explaining rule) built from the
same model and policy, with the caller's token roles added as `g, <subject>, <role>` links. The
cost does not grow with the number of rules: rules are grouped by the subject or role they name
(when the matcher has `g(r.sub, p.sub)` or `r.sub == p.sub` as a top-level conjunct), each group
holds a path trie (`authcar.policy.index`), and each rule knows which common methods its method
conjunct accepts. A decision walks the trie of the subject and of each role it reaches, then
evaluates, in policy order, only the candidates, and only the conjuncts the index did not settle.
A matcher without such conjuncts (a top-level `||`, say) still decides correctly, by evaluating
every rule of its one group.

Where authcar and Casbin differ, it is because Casbin would raise (the gate then denies) or would
silently misread a policy:

- An error evaluating a rule (a claim the token lacks, a comparison of a string with a number, a
  matcher value that is neither bool nor float) makes an allow rule not match and a deny rule
  match: an error never grants access. Casbin raises instead. Rules the index rules out are not
  evaluated, so their errors cannot happen.
- At compile time, PolicyError for what Casbin ignores or trips over later: unknown policy types,
  wrong field counts, effects other than allow/deny, non-numeric priorities, role chains deeper
  than Casbin follows, patterns that are invalid or could not be matched in bounded time.
- keyGet, keyGet2 and keyGet3 are available without `add_function`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from operator import attrgetter
from typing import Any

from casbin.model import Model

from authcar.compat import split_policy_line
from authcar.policy import Decision, PolicyError, PolicyRequest
from authcar.policy.functions import PATTERN_FUNCTIONS
from authcar.policy.index import ANYWHERE, PathIndex, placement
from authcar.policy.matcher import EQUALS, REQUEST_FIELDS, MatcherError, MatcherProgram, compile_matcher
from authcar.policy.roles import RequestRoles, RoleGraph

# Methods whose verdict each rule's method conjunct precomputes; others are evaluated per request.
COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_ERROR = object()


class Effect(Enum):
    """The policy effects Casbin ships, by the model text that names them (after p. -> p_)."""

    ALLOW_OVERRIDE = "some(where (p_eft == allow))"
    DENY_OVERRIDE = "!some(where (p_eft == deny))"
    ALLOW_AND_DENY = "some(where (p_eft == allow)) && !some(where (p_eft == deny))"
    PRIORITY = "priority(p_eft) || deny"


# Which matching rule ends the scan, as Casbin's effectors' intermediate_effect decides it.
_STOPS_ON_ALLOW = frozenset({Effect.ALLOW_OVERRIDE, Effect.PRIORITY})
_STOPS_ON_DENY = frozenset({Effect.DENY_OVERRIDE, Effect.ALLOW_AND_DENY, Effect.PRIORITY})


class Rule:
    __slots__ = ("deny", "explain", "methods", "prepared", "values")

    def __init__(self, values: tuple[str, ...], deny: bool) -> None:
        self.values = values
        self.explain = values  # Casbin's explain: the p line's fields
        self.deny = deny
        self.prepared: tuple[Any, ...] = ()
        # Common methods the method conjunct accepts; None: evaluate it for every method.
        self.methods: frozenset[str] | None = None


class CompiledPolicy:
    """An immutable, thread-safe decision function for one version of the model and policy."""

    def __init__(
        self,
        version: str,
        rules: list[Rule],
        program: MatcherProgram,
        effect: Effect,
        groups: dict[str | None, PathIndex],
        roles: RoleGraph | None,
        subject_rules: tuple[tuple[str, tuple[str, ...]], ...] = (),
        linked_names: frozenset[str] = frozenset(),
    ) -> None:
        self.version = version
        self.rule_count = len(rules)
        # For diagnostics only (authcar.policy.diagnostics): each rule's `sub` with the rule, and
        # every name the `g` lines mention.
        self.subject_rules = subject_rules
        self.linked_names = linked_names
        # Which request values narrow the candidates ("subject", "path", "method"); empty: every
        # decision evaluates every rule (worth a warning in the logs for large policies).
        self.indexed_by = tuple(
            name
            for name, hint in (
                ("subject", program.subject),
                ("path", program.path),
                ("method", program.method),
            )
            if hint is not None
        )
        self._rules = rules
        self._effect = effect
        self._groups = groups
        self._single_group = groups.get(None) if program.subject is None else None
        self._roles = roles
        self._needs_roles = program.uses_request_roles or (
            program.subject is not None and program.subject.function == "g"
        )
        self._subject_by_roles = program.subject is not None and program.subject.function == "g"
        self._method_indexed = program.method is not None
        fields = [REQUEST_FIELDS[token] for token in program.request_tokens]
        getter = attrgetter(*fields)
        self._request_values: Callable[[PolicyRequest], tuple[Any, ...]] = (
            getter if len(fields) > 1 else lambda request: (getter(request),)
        )
        # [path settled by the index][method settled by the index] -> what is left to evaluate
        self._residuals = [
            [program.residual(_settled(program, path=path, method=method)) for method in (False, True)]
            for path in (False, True)
        ]
        self._stop_on_allow = effect in _STOPS_ON_ALLOW
        self._stop_on_deny = effect in _STOPS_ON_DENY

    def decide(self, request: PolicyRequest) -> Decision:
        """Allow or deny, with the rule that decided; never raises (an internal error denies)."""
        try:
            return self._decide(request)
        except Exception:
            return Decision(False, (), "error", self.version)

    def _decide(self, request: PolicyRequest) -> Decision:
        values = self._request_values(request)
        roles = (
            RequestRoles(self._roles, request.subject, tuple(request.roles))
            if self._needs_roles and self._roles is not None
            else None
        )
        path = request.path
        entries: list[int] = []
        if self._single_group is not None:
            self._single_group.collect(path, entries)
        else:
            groups = self._groups
            names = roles.closure() if self._subject_by_roles and roles is not None else (request.subject,)
            for name in names:
                group = groups.get(name)
                if group is not None:
                    group.collect(path, entries)
        entries.sort()

        method = request.method
        method_known = self._method_indexed and method in COMMON_METHODS
        residuals = self._residuals
        rules = self._rules
        explain: Rule | None = None
        seen_allow = seen_deny = False
        for entry in entries:
            rule = rules[entry >> 1]
            if method_known and rule.methods is not None:
                if method not in rule.methods:
                    continue
                evaluate = residuals[entry & 1][1]
            else:
                evaluate = residuals[entry & 1][0]
            if evaluate is not None:
                outcome = _outcome(evaluate, values, rule, roles)
                if outcome is False or (outcome is _ERROR and not rule.deny):
                    continue
            explain = rule
            if rule.deny:
                seen_deny = True
                if self._stop_on_deny:
                    break
            else:
                seen_allow = True
                if self._stop_on_allow:
                    break

        effect = self._effect
        if effect is Effect.DENY_OVERRIDE:
            allowed = not seen_deny
        elif effect is Effect.ALLOW_AND_DENY:
            allowed = seen_allow and not seen_deny
        else:
            allowed = seen_allow
        if allowed:
            return Decision(True, explain.explain if explain else (), "allowed", self.version)
        if explain is not None:
            return Decision(False, explain.explain, "denied_by_rule", self.version)
        return Decision(False, (), "no_matching_rule", self.version)


def _settled(program: MatcherProgram, *, path: bool, method: bool) -> frozenset[int]:
    """The conjuncts a candidate is known to satisfy: its subject always, path and method when exact."""
    hints = [program.subject, program.path if path else None, program.method if method else None]
    return frozenset(hint.conjunct for hint in hints if hint is not None)


def _outcome(evaluate: Callable[..., Any], values: tuple[Any, ...], rule: Rule, roles: Any) -> object:
    """True / False as Casbin reads the matcher's value, or _ERROR where Casbin would raise."""
    try:
        result = evaluate(values, rule.values, rule.prepared, roles)
    except Exception:
        return _ERROR
    if result is True or result is False:
        return result
    if isinstance(result, float):
        return result != 0
    return _ERROR  # Casbin: "matcher result should be bool, int or float"


def compile_policy(model_text: str, policy_text: str, *, version: str) -> CompiledPolicy:
    """Check and compile a model and a policy; PolicyError lists every problem found."""
    problems: list[str] = []
    model = _load_model(model_text, problems)
    if model is None:
        raise PolicyError(problems)
    request_tokens = _request_tokens(model, problems)
    policy_tokens = _policy_tokens(model, problems)
    role_names = _role_definitions(model, problems)
    effect = _effect(model, problems)
    program: MatcherProgram | None = None
    if request_tokens is not None and policy_tokens is not None:
        try:
            program = compile_matcher(
                model["m"]["m"].value, request_tokens, policy_tokens, frozenset(role_names)
            )
        except MatcherError as exc:
            problems.append(f"model: matcher: {exc}")

    before = len(problems)
    rules, links = _read_policy(policy_text, policy_tokens, role_names, problems)
    # No rules because lines were refused: those lines are the problem, not an empty policy.
    if not rules and len(problems) == before:
        problems.append("policy: no `p` rules (every request would be denied)")
    graphs = {name: RoleGraph(links.get(name, [])) for name in role_names}
    for name, graph in graphs.items():
        problems.extend(f"policy: {name}: {problem}" for problem in graph.check_depth())

    groups: dict[str | None, PathIndex] = {}
    if program is not None and policy_tokens is not None:
        for name, graph in graphs.items():
            program.namespace[f"roles_{name}"] = graph.has_link
        _prepare_rules(program, rules, groups, problems)
    if problems or program is None or effect is None:
        raise PolicyError(problems)
    subject = policy_tokens.index("sub") if policy_tokens and "sub" in policy_tokens else None
    return CompiledPolicy(
        version,
        [rule for rule, _line in rules],
        program,
        effect,
        groups,
        graphs.get("g"),
        subject_rules=tuple((r.values[subject], r.explain) for r, _ in rules) if subject is not None else (),
        linked_names=frozenset(name for pairs in links.values() for pair in pairs for name in pair),
    )


def _load_model(text: str, problems: list[str]) -> Model | None:
    model = Model()
    try:
        model.load_model_from_text(text)
    except Exception as exc:
        problems.append(f"model: cannot parse: {exc}")
        return None
    complete = True
    for section, name in (
        ("r", "request_definition"),
        ("p", "policy_definition"),
        ("e", "policy_effect"),
        ("m", "matchers"),
    ):
        definitions = model[section] or {}
        if section not in definitions:
            problems.append(f"model: [{name}] must define {section} = ...")
            complete = False
        extra = sorted(key for key in definitions if key != section)
        if extra:
            problems.append(f"model: [{name}] defines {', '.join(extra)}; only {section} is used")
    return model if complete else None


def _request_tokens(model: Model, problems: list[str]) -> list[str] | None:
    tokens = [token.removeprefix("r_") for token in model["r"]["r"].tokens]
    unknown = [token for token in tokens if token not in REQUEST_FIELDS]
    if unknown:
        problems.append(
            f"model: request_definition: unknown token(s) {', '.join(unknown)} "
            f"(available: {', '.join(REQUEST_FIELDS)})"
        )
    if len(set(tokens)) != len(tokens):
        problems.append("model: request_definition names a token twice")
    return None if unknown or len(set(tokens)) != len(tokens) else tokens


def _policy_tokens(model: Model, problems: list[str]) -> list[str] | None:
    tokens = [token.removeprefix("p_") for token in model["p"]["p"].tokens]
    bad = [token for token in tokens if not token.isidentifier()]
    if bad:
        problems.append(f"model: policy_definition: token(s) {', '.join(map(repr, bad))} are not names")
    if len(set(tokens)) != len(tokens):
        problems.append("model: policy_definition names a token twice")
    return None if bad or len(set(tokens)) != len(tokens) else tokens


def _role_definitions(model: Model, problems: list[str]) -> list[str]:
    names = []
    for name, assertion in (model["g"] or {}).items():
        if [part.strip() for part in assertion.value.split(",")] != ["_", "_"]:
            problems.append(
                f"model: role_definition {name} = {assertion.value}: "
                "only `_, _` is supported (no domains or conditions)"
            )
        else:
            names.append(name)
    return names


def _effect(model: Model, problems: list[str]) -> Effect | None:
    text = model["e"]["e"].value
    try:
        return Effect(text)
    except ValueError:
        known = "; ".join(effect.value.replace("p_", "p.") for effect in Effect)
        problems.append(f"model: unsupported policy_effect {text.replace('p_', 'p.')!r} (supported: {known})")
        return None


def _depths(text: str) -> list[int]:
    """The bracket depth after each character, counted as the policy reader counts it."""
    depth, depths = 0, []
    for char in text:
        depth += 1 if char in "([" else -1 if char in ")]" else 0
        depths.append(depth)
    return depths


def _opens_unclosed(field: str) -> bool:
    depths = _depths(field)
    return bool(depths) and depths[-1] > 0


def _unclosed(field: str) -> str:
    # Commas inside brackets do not split fields, so an unclosed one (a regex such as `^(GET$`)
    # swallows the rest of the line: say that, not that the line has too few fields.
    value = field.split(",")[0].strip()
    return (
        f"{value!r} opens a bracket or parenthesis it never closes, so the rest of the line"
        f" ({field[len(value) :].lstrip(', ')!r}) was read as part of it"
    )


def _unbalanced(raw: str) -> str:
    for piece in raw.split(",")[1:]:
        depths = _depths(piece)
        if depths and min(depths) < 0:
            return f"{piece.strip()!r} closes a bracket or parenthesis it never opened"
    return "unbalanced brackets or parentheses"


def _read_policy(
    text: str, policy_tokens: list[str] | None, role_names: list[str], problems: list[str]
) -> tuple[list[tuple[Rule, int]], dict[str, list[tuple[str, str]]]]:
    """The p rules (in Casbin's order) with their line numbers, and the role links, as pycasbin's file
    adapter reads them: lines split on `\\n` and stripped, blank lines and `#` comments skipped, fields
    split on commas outside brackets and parentheses, each field stripped, quotes kept."""
    rules: list[tuple[Rule, int]] = []
    links: dict[str, list[tuple[str, str]]] = {}
    eft = policy_tokens.index("eft") if policy_tokens and "eft" in policy_tokens else None
    priority = policy_tokens.index("priority") if policy_tokens and "priority" in policy_tokens else None
    for number, raw in enumerate(text.split("\n"), start=1):
        try:
            tokens = split_policy_line(raw.strip())
        except Exception:
            problems.append(f"policy line {number}: {_unbalanced(raw)}")
            continue
        if tokens is None:
            continue
        kind, fields = tokens[0], tuple(tokens[1:])
        if kind == "p":
            if policy_tokens is None:
                continue
            if len(fields) != len(policy_tokens):
                unclosed = next((f for f in fields if _opens_unclosed(f)), None)
                problems.append(
                    f"policy line {number}: {_unclosed(unclosed)}"
                    if unclosed is not None
                    else f"policy line {number}: {len(fields)} fields, "
                    f"the policy_definition has {len(policy_tokens)} "
                    f"({', '.join(policy_tokens)})"
                )
                continue
            if eft is not None and fields[eft] not in ("allow", "deny"):
                problems.append(f"policy line {number}: effect {fields[eft]!r} is neither allow nor deny")
                continue
            if priority is not None and not (fields[priority].isascii() and fields[priority].isdigit()):
                problems.append(f"policy line {number}: priority {fields[priority]!r} is not a whole number")
                continue
            rules.append((Rule(fields, eft is not None and fields[eft] == "deny"), number))
        elif kind in role_names:
            if len(fields) != 2:
                problems.append(
                    f"policy line {number}: {kind} takes 2 fields (user, role), not {len(fields)}"
                )
                continue
            links.setdefault(kind, []).append((fields[0], fields[1]))
        else:
            known = ", ".join(["p", *role_names])
            problems.append(f"policy line {number}: unknown policy type {kind!r} (the model defines {known})")
    if priority is not None:
        # Casbin sorts by priority when it loads a policy (a stable sort: ties keep file order).
        rules.sort(key=lambda item: int(item[0].values[priority]))
    return rules, links


def _prepare_rules(
    program: MatcherProgram,
    rules: Sequence[tuple[Rule, int]],
    groups: dict[str | None, PathIndex],
    problems: list[str],
) -> None:
    subject, path, method = program.subject, program.path, program.method
    placements: dict[tuple[str, str], Any] = {}
    method_sets: dict[tuple[str, str], frozenset[str] | None] = {}
    for number, (rule, line) in enumerate(rules):
        try:
            rule.prepared = program.prepare(rule.values)
        except Exception as exc:
            problems.append(f"policy line {line}: {exc}")
            continue
        if method is not None:
            pattern = rule.values[method.field]
            key = (method.function, pattern)
            if key not in method_sets:
                method_sets[key] = _accepted_methods(method.function, pattern, rule.prepared, method.site)
            rule.methods = method_sets[key]
        group_key = rule.values[subject.field] if subject is not None else None
        group = groups.get(group_key)
        if group is None:
            group = groups[group_key] = PathIndex()
        if path is None:
            group.add(number, ANYWHERE, exact=False)
            continue
        pattern = rule.values[path.field]
        key = (path.function, pattern)
        if key not in placements:
            placements[key] = placement(path.function, pattern)
        exact = path.function == EQUALS or PATTERN_FUNCTIONS[path.function].index_is_exact
        group.add(number, placements[key], exact)


def _accepted_methods(
    function: str, pattern: str, prepared: tuple[Any, ...], site: int | None
) -> frozenset[str] | None:
    """The common methods for which the method conjunct is True; None if it cannot be told ahead."""
    if function == EQUALS:
        return frozenset(method for method in COMMON_METHODS if method == pattern)
    if site is None:
        return None
    matches = prepared[site]
    try:
        return frozenset(method for method in COMMON_METHODS if matches(method) is True)
    except Exception:
        return None
