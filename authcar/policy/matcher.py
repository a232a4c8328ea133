"""A Casbin matcher compiled once into a Python function, instead of interpreted on every rule.

The matcher text gets exactly Casbin's treatment (`&&`, `||` and `!` rewritten, `r.`/`p.` escaped,
comments removed by the model parser), then Python's parser. Only the constructs Casbin's simpleeval
evaluates the same way as Python are accepted: `and or not`, comparisons (`== != < > <= >= in
not in`), literals, tuples/lists/sets, attribute and item access below `r.claims`, and the functions
in `authcar.policy.functions` plus the role functions (`g`, `g2`, ...) and `eval(p.field)`. Anything
else is a PolicyError at compile time, not a surprise at request time.

The result is a tree of top-level conjuncts (`a && b && c`). The engine indexes some of them (the
subject's roles, the path, the method) and asks for a function that evaluates only the rest, so a
rule the index already proved is not evaluated twice.

Generated functions take `(R, P, S, G)`: the request's values, in request-definition order; the
rule's fields; the rule's prepared patterns (one per call site); the request's role view.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from casbin.util import util as casbin_util

from authcar.policy.functions import PATTERN_FUNCTIONS, PatternFunction, Prepared

# Request-definition tokens and the PolicyRequest field each one reads.
REQUEST_FIELDS: dict[str, str] = {
    "sub": "subject",
    "obj": "path",
    "act": "method",
    "claims": "claims",
    "iss": "issuer",
    "src": "source",
}
# simpleeval refuses these attribute names outright.
_FORBIDDEN_ATTRIBUTES = frozenset(
    {"format", "format_map", "mro", "tb_frame", "gi_frame", "ag_frame", "cr_frame"}
)
_FORBIDDEN_ATTRIBUTE_PREFIXES = ("_", "func_")
# simpleeval tries getattr before indexing; where a JSON value has no such attribute, indexing is
# the whole story and the generated code indexes directly.
_JSON_TYPES = (dict, MappingProxyType, list, str, int, float, bool, type(None))
_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_CONSTANT_TYPES = (str, int, float, bool, type(None))
# Path and method functions the index understands (first argument the request's, second a field).
PATH_FUNCTIONS = frozenset({"keyMatch", "keyMatch2", "keyMatch3", "keyMatch4", "regexMatch"})
METHOD_FUNCTIONS = frozenset(
    {"keyMatch", "keyMatch2", "keyMatch3", "keyMatch4", "keyMatch5", "regexMatch", "globMatch"}
)
EQUALS = "=="


class MatcherError(ValueError):
    """A matcher (or an eval() rule) that authcar cannot compile faithfully."""


def casbin_expression(text: str) -> str:
    """The expression text Casbin's `_get_expression` hands to simpleeval."""
    text = text.replace("&&", "and").replace("||", "or")
    return re.sub(r"!(?!=)", "not ", text)


def claim_attribute(value: Any, name: str) -> Any:
    """simpleeval's attribute access: an attribute if there is one, else the item of that name."""
    try:
        return getattr(value, name)
    except (AttributeError, TypeError):
        pass
    return value[name]


@dataclass(frozen=True, slots=True)
class Site:
    """A pattern-function call whose pattern is fixed per rule: prepared once per rule."""

    function: PatternFunction | None  # None: an eval() site
    field: int  # the policy field holding the pattern (or the eval rule)


@dataclass(frozen=True, slots=True)
class IndexHint:
    """A top-level conjunct the engine can answer from an index instead of evaluating."""

    conjunct: int
    function: str  # "g", EQUALS, or a path/method function name
    field: int  # the policy field compared with the request value
    site: int | None  # the prepared site evaluating it, for functions


@dataclass(slots=True)
class MatcherProgram:
    request_tokens: tuple[str, ...]
    policy_tokens: tuple[str, ...]
    role_names: frozenset[str]
    conjuncts: list[ast.expr] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    subject: IndexHint | None = None
    path: IndexHint | None = None
    method: IndexHint | None = None
    uses_request_roles: bool = False
    namespace: dict[str, Any] = field(default_factory=dict)

    def residual(self, skip: frozenset[int]) -> Callable[..., Any] | None:
        """The matcher without the conjuncts in `skip` (known true); None if nothing is left."""
        kept = [conjunct for number, conjunct in enumerate(self.conjuncts) if number not in skip]
        if not kept:
            return None
        if len(self.conjuncts) - 1 in skip:
            # `a and b` is b's value when a holds; a skipped last conjunct was True, not the value before.
            kept.append(ast.Constant(True))
        body = kept[0] if len(kept) == 1 else ast.BoolOp(op=ast.And(), values=kept)
        return _function(body, ("R", "P", "S", "G"), self.namespace)

    def prepare(self, values: Sequence[str]) -> tuple[Prepared, ...]:
        """One rule's prepared sites; raises PatternError or MatcherError naming the field."""
        prepared: list[Prepared] = []
        for site in self.sites:
            pattern = values[site.field]
            if site.function is None:
                prepared.append(self._compile_eval(pattern, values))
            else:
                prepared.append(_prepare_cached(self.namespace, site.function, pattern))
        return tuple(prepared)

    def _compile_eval(self, rule: str, values: Sequence[str]) -> Prepared:
        cache: dict[tuple[str, tuple[str, ...]], Prepared] = self.namespace["__evals__"]
        key = (rule, tuple(values))
        if key not in cache:
            text = casbin_expression(casbin_util.escape_assertion(rule))
            translator = _Translator(self, rule_values=tuple(values))
            body = translator.translate(_parse(text))
            cache[key] = _function(body, ("R", "G"), translator.namespace)
        return cache[key]


def compile_matcher(
    text: str, request_tokens: Sequence[str], policy_tokens: Sequence[str], role_names: frozenset[str]
) -> MatcherProgram:
    """Compile the model's `m` value (as the model parser left it); raises MatcherError."""
    program = MatcherProgram(tuple(request_tokens), tuple(policy_tokens), role_names)
    program.namespace.update(
        {"__builtins__": {}, "__evals__": {}, "__prepared__": {}, "_attr": claim_attribute}
    )
    tree = _parse(casbin_expression(text))
    conjuncts = _flatten_and(tree)
    translator = _Translator(program)
    program.conjuncts = [translator.translate(conjunct) for conjunct in conjuncts]
    program.uses_request_roles = translator.uses_request_roles
    _find_hints(program, conjuncts, translator.site_of_call)
    return program


def _parse(text: str) -> ast.expr:
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise MatcherError(f"cannot parse {text!r}: {exc.msg}") from None


def _flatten_and(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [part for value in node.values for part in _flatten_and(value)]
    return [node]


def _prepare_cached(namespace: dict[str, Any], function: PatternFunction, pattern: Any) -> Prepared:
    if not isinstance(pattern, str):
        raise MatcherError(f"{function.name}: the pattern must be a string")
    cache: dict[tuple[str, str], Prepared] = namespace["__prepared__"]
    key = (function.name, pattern)
    if key not in cache:
        cache[key] = function.prepare(pattern)
    return cache[key]


def _function(body: ast.expr, parameters: tuple[str, ...], namespace: dict[str, Any]) -> Callable[..., Any]:
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=name) for name in parameters],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    definition = ast.FunctionDef(
        name="matcher", args=arguments, body=[ast.Return(value=body)], decorator_list=[], returns=None
    )
    if "type_params" in ast.FunctionDef._fields:  # Python 3.12+
        definition.type_params = []
    module = ast.fix_missing_locations(ast.Module(body=[definition], type_ignores=[]))
    scope: dict[str, Any] = {}
    # The tree was rebuilt node by node from the validated matcher: names are only R/P/S/G and the
    # helpers bound in `namespace`, literals are constants. Nothing the policy wrote is executed as text.
    exec(compile(module, "<policy matcher>", "exec"), namespace, scope)  # noqa: S102
    return scope["matcher"]


def _name(identifier: str) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Load())


def _index(container: str, position: int) -> ast.Subscript:
    return ast.Subscript(value=_name(container), slice=ast.Constant(position), ctx=ast.Load())


def _call(function: ast.expr, arguments: list[ast.expr]) -> ast.Call:
    return ast.Call(func=function, args=arguments, keywords=[])


class _Translator:
    """Validates a matcher tree and rebuilds it over R, P, S and G."""

    def __init__(self, program: MatcherProgram, rule_values: tuple[str, ...] | None = None) -> None:
        self.program = program
        # Inside an eval() rule the policy fields are known: they become literals.
        self.rule_values = rule_values
        self.namespace = program.namespace if rule_values is None else dict(program.namespace)
        self.uses_request_roles = False
        self.site_of_call: dict[int, int] = {}
        self._literal_sites = 0

    def translate(self, node: ast.expr) -> ast.expr:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise MatcherError(f"unsupported expression: {ast.unparse(node)!r}")
        return method(node)

    def _BoolOp(self, node: ast.BoolOp) -> ast.expr:
        return ast.BoolOp(op=node.op, values=[self.translate(value) for value in node.values])

    def _UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            raise MatcherError(f"unsupported operator in {ast.unparse(node)!r}")
        return ast.UnaryOp(op=node.op, operand=self.translate(node.operand))

    def _Compare(self, node: ast.Compare) -> ast.expr:
        for operator in node.ops:
            if not isinstance(operator, _COMPARISONS):
                raise MatcherError(f"unsupported comparison in {ast.unparse(node)!r}")
        return ast.Compare(
            left=self.translate(node.left),
            ops=node.ops,
            comparators=[self.translate(value) for value in node.comparators],
        )

    def _Constant(self, node: ast.Constant) -> ast.expr:
        if not isinstance(node.value, _CONSTANT_TYPES):
            raise MatcherError(f"unsupported literal {ast.unparse(node)!r}")
        return ast.Constant(node.value)

    def _Tuple(self, node: ast.Tuple) -> ast.expr:
        return ast.Tuple(elts=[self.translate(value) for value in node.elts], ctx=ast.Load())

    def _List(self, node: ast.List) -> ast.expr:
        return ast.List(elts=[self.translate(value) for value in node.elts], ctx=ast.Load())

    def _Set(self, node: ast.Set) -> ast.expr:
        return ast.Set(elts=[self.translate(value) for value in node.elts])

    def _Name(self, node: ast.Name) -> ast.expr:
        identifier = node.id
        request, policy = self.program.request_tokens, self.program.policy_tokens
        if identifier.startswith("r_") and identifier[2:] in request:
            return _index("R", request.index(identifier[2:]))
        if identifier.startswith("p_") and identifier[2:] in policy:
            position = policy.index(identifier[2:])
            if self.rule_values is not None:
                return ast.Constant(self.rule_values[position])
            return _index("P", position)
        raise MatcherError(f"unknown name {identifier!r} (request tokens: r.{', r.'.join(request)})")

    def _Attribute(self, node: ast.Attribute) -> ast.expr:
        self._require_claims(node)
        name = node.attr
        if name.startswith(_FORBIDDEN_ATTRIBUTE_PREFIXES) or name in _FORBIDDEN_ATTRIBUTES:
            raise MatcherError(f"attribute {name!r} is not available")
        value = self.translate(node.value)
        if any(hasattr(kind, name) for kind in _JSON_TYPES):
            return _call(_name("_attr"), [value, ast.Constant(name)])
        return ast.Subscript(value=value, slice=ast.Constant(name), ctx=ast.Load())

    def _Subscript(self, node: ast.Subscript) -> ast.expr:
        self._require_claims(node)
        if not isinstance(node.slice, ast.Constant) or not isinstance(node.slice.value, str | int):
            raise MatcherError(f"only a literal key may be used in {ast.unparse(node)!r}")
        return ast.Subscript(
            value=self.translate(node.value), slice=ast.Constant(node.slice.value), ctx=ast.Load()
        )

    def _require_claims(self, node: ast.Attribute | ast.Subscript) -> None:
        root: ast.expr = node
        while isinstance(root, ast.Attribute | ast.Subscript):
            root = root.value
        if not (isinstance(root, ast.Name) and root.id == "r_claims"):
            raise MatcherError(f"attribute access is only available below r.claims: {ast.unparse(node)!r}")

    def _Call(self, node: ast.Call) -> ast.expr:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise MatcherError(f"unsupported call {ast.unparse(node)!r}")
        name = node.func.id
        if name in self.program.role_names:
            return self._role_call(node, name)
        if name == "eval":
            return self._eval_call(node)
        function = PATTERN_FUNCTIONS.get(name)
        if function is None:
            known = ", ".join(sorted([*PATTERN_FUNCTIONS, *self.program.role_names, "eval"]))
            raise MatcherError(f"unknown function {name!r} (available: {known})")
        if len(node.args) != function.arity:
            raise MatcherError(f"{name} takes {function.arity} arguments: {ast.unparse(node)!r}")
        pattern = node.args[1]
        others = [self.translate(argument) for position, argument in enumerate(node.args) if position != 1]
        if isinstance(pattern, ast.Name) and pattern.id.startswith("p_") and self.rule_values is None:
            self.translate(pattern)  # validates the name
            site = self._add_site(Site(function, self.program.policy_tokens.index(pattern.id[2:])))
            self.site_of_call[id(node)] = site
            return _call(_index("S", site), others)
        translated = self.translate(pattern)
        if isinstance(translated, ast.Constant):
            self._literal_sites += 1
            helper = f"L{self._literal_sites}_{function.name}"
            try:
                self.namespace[helper] = _prepare_cached(self.namespace, function, translated.value)
            except ValueError as exc:
                raise MatcherError(f"{ast.unparse(node)}: {exc}") from None
            return _call(_name(helper), others)
        # The pattern comes from the request: prepared on every call (still through RE2 when needed).
        helper = f"D{function.name}"
        self.namespace[helper] = _dynamic(function)
        return _call(_name(helper), [translated, *others])

    def _role_call(self, node: ast.Call, name: str) -> ast.expr:
        if len(node.args) != 2:
            raise MatcherError(f"{name} takes 2 arguments (domains are not supported): {ast.unparse(node)!r}")
        arguments = [self.translate(argument) for argument in node.args]
        if name == "g":
            self.uses_request_roles = True
            return _call(ast.Attribute(value=_name("G"), attr="has_link", ctx=ast.Load()), arguments)
        return _call(_name(f"roles_{name}"), arguments)

    def _eval_call(self, node: ast.Call) -> ast.expr:
        if self.rule_values is not None:
            raise MatcherError("eval() inside an eval() rule is not supported")
        if (
            len(node.args) != 1
            or not isinstance(node.args[0], ast.Name)
            or not node.args[0].id.startswith("p_")
        ):
            raise MatcherError(f"eval() takes one policy field, as in eval(p.rule): {ast.unparse(node)!r}")
        self.translate(node.args[0])
        site = self._add_site(Site(None, self.program.policy_tokens.index(node.args[0].id[2:])))
        # An eval() rule may use g() too; the role view is always handed over.
        self.uses_request_roles = True
        return _call(_index("S", site), [_name("R"), _name("G")])

    def _add_site(self, site: Site) -> int:
        self.program.sites.append(site)
        return len(self.program.sites) - 1


def _dynamic(function: PatternFunction) -> Callable[..., Any]:
    def call(pattern: Any, *arguments: Any) -> Any:
        return function.prepare(pattern)(*arguments)

    return call


def _find_hints(program: MatcherProgram, conjuncts: list[ast.expr], site_of_call: dict[int, int]) -> None:
    """Which top-level conjuncts compare a request value with one policy field the index can use."""
    policy = program.policy_tokens

    def field_of(node: ast.expr) -> int | None:
        if isinstance(node, ast.Name) and node.id.startswith("p_") and node.id[2:] in policy:
            return policy.index(node.id[2:])
        return None

    def compared(
        number: int, node: ast.expr, request_token: str, functions: frozenset[str]
    ) -> IndexHint | None:
        request_name = "r_" + request_token
        if request_token not in program.request_tokens:
            return None
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            left, right = node.left, node.comparators[0]
            for mine, theirs in ((left, right), (right, left)):
                position = field_of(theirs)
                if isinstance(mine, ast.Name) and mine.id == request_name and position is not None:
                    return IndexHint(number, EQUALS, position, None)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in functions
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == request_name
        ):
            position = field_of(node.args[1])
            if position is not None:
                return IndexHint(number, node.func.id, position, site_of_call.get(id(node)))
        return None

    for number, conjunct in enumerate(conjuncts):
        if program.subject is None:
            program.subject = compared(number, conjunct, "sub", frozenset({"g"} & program.role_names))
            if program.subject is not None:
                continue
        if program.path is None:
            program.path = compared(number, conjunct, "obj", PATH_FUNCTIONS)
            if program.path is not None:
                continue
        if program.method is None:
            program.method = compared(number, conjunct, "act", METHOD_FUNCTIONS)
