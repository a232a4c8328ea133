"""The internals authcar takes from other libraries (authcar/compat.py) still behave as it uses them.

Each failure names the library and its installed version, so an upgrade that moved an internal says
which one, not just that some policy or protocol test went wrong."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from authcar import compat

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "authcar"

# uvicorn hooks authcar replaces without calling super(): if uvicorn renamed one, authcar's
# version would silently never run (the super() calls are found below by reading protocol.py).
REPLACED_HOOKS = {
    "HttpToolsProtocol": ("send_400_response",),
    "WebSocketsSansIOProtocol": ("handle_handshake_exception",),
}
# authcar's own classes in protocol.py, mapped to the uvicorn class whose methods they extend.
UVICORN_BASES = {
    "HttpToolsProtocol": compat.HttpToolsProtocol,
    "WebSocketsSansIOProtocol": compat.WebSocketsSansIOProtocol,
    "GateWebSocketProtocol": compat.WebSocketsSansIOProtocol,
    "FlowControl": compat.FlowControl,
}


def installed(library: str) -> str:
    return f"{library} {metadata.version(library)}"


def test_a_moved_internal_is_reported_with_library_version_and_supported_range() -> None:
    error = compat.moved("uvicorn", ImportError("cannot import name 'HttpToolsProtocol'"))
    assert isinstance(error, ImportError)
    message = str(error)
    assert message.startswith(f"uvicorn {metadata.version('uvicorn')} no longer has")
    assert "cannot import name 'HttpToolsProtocol'" in message
    declared = [spec for spec in metadata.requires("authcar") or [] if spec.startswith("uvicorn")]
    assert message.endswith(f"authcar supports {declared[0]}"), message
    python = str(compat.moved("python", ImportError("No module named 're._parser'")))
    assert python.startswith(f"Python {sys.version.split()[0]} no longer has")
    assert "authcar supports Python >=3.11" in python


def test_internals_are_imported_only_through_compat() -> None:
    # Private names (a leading underscore) and library modules outside their public API.
    private = re.compile(
        r"^\s*(?:from\s+(?:re\._|uvicorn\.protocols|casbin\.persist\.adapter)\S*\s+import"
        r"|import\s+re\._|from\s+\S+\s+import\s+\(?\s*_[a-z])"
        r"|\bre2\._re2\b",
        re.MULTILINE,
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1}: {match.group(0).strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py"
        for text in [path.read_text()]
        for match in private.finditer(text)
    ]
    assert not offenders, "import these from authcar.compat instead:\n" + "\n".join(offenders)


def test_casbin_policy_line_splitter() -> None:
    split = compat.split_policy_line
    where = installed("pycasbin")
    assert split("p, alice, /data/*, GET") == ["p", "alice", "/data/*", "GET"], where
    # Commas inside parentheses and brackets stay in their field; quotes are kept, not parsed.
    assert split('p, keyMatch(r.obj, "/x,y"), [a, b]') == ["p", 'keyMatch(r.obj, "/x,y")', "[a, b]"], where
    assert split("# a comment") is None, where
    assert split("") is None, where


def test_python_regex_parser() -> None:
    sre, parse = compat.sre_constants, compat.sre_parser.parse
    where = f"Python {sys.version.split()[0]}"
    items = list(parse(r"^/a+[^/]\d$"))
    assert items[0] == (sre.AT, sre.AT_BEGINNING), where
    assert items[1] == (sre.LITERAL, ord("/")), where
    op, (least, most, repeated) = items[2]
    assert (op, least, most, list(repeated)) == (sre.MAX_REPEAT, 1, sre.MAXREPEAT, [(sre.LITERAL, 97)]), where
    assert items[3] == (sre.NOT_LITERAL, ord("/")), where
    assert items[4] == (sre.IN, [(sre.CATEGORY, sre.CATEGORY_DIGIT)]), where
    assert items[5] == (sre.AT, sre.AT_END), where
    op, (_group, _add, _remove, body) = next(iter(parse("(a|b)")))
    assert op is sre.SUBPATTERN, where
    assert next(iter(body))[0] in (sre.BRANCH, sre.IN), where
    with pytest.raises(re.error):
        parse("^(GET$")


def test_re2_binding() -> None:
    import re2

    where = installed("google-re2")
    options = re2.Options()
    options.log_errors = False
    anchor = compat.re2_binding.RE2.Anchor.ANCHOR_START
    compiled = compat.re2_binding.RE2(b"/a(b+)", options)
    assert compiled.ok(), where
    spans = compiled.Match(anchor, b"/abb/", 0, 5)
    assert tuple(spans[:2]) == ((0, 4), (2, 4)), where
    assert compiled.Match(anchor, b"x/ab", 0, 4)[0] == (-1, -1), where  # anchored at the start
    broken = compat.re2_binding.RE2(b"(", options)
    assert not broken.ok(), where
    assert broken.error(), where


def protocol_classes() -> list[ast.ClassDef]:
    tree = ast.parse((PACKAGE / "protocol.py").read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def test_every_uvicorn_method_authcar_extends_still_exists() -> None:
    where = installed("uvicorn")
    checked = 0
    for cls in protocol_classes():
        bases = [base.id for base in cls.bases if isinstance(base, ast.Name) and base.id in UVICORN_BASES]
        if not bases:
            continue
        base = UVICORN_BASES[bases[0]]
        for node in ast.walk(cls):
            is_super_call = (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "super"
            )
            if is_super_call:
                checked += 1
                assert callable(getattr(base, node.attr, None)), (
                    f"{where}: {base.__name__} has no {node.attr} (authcar/protocol.py {cls.name} extends it)"
                )
    assert checked >= 10  # the scan found protocol.py's overrides


@pytest.mark.parametrize("base_name", sorted(REPLACED_HOOKS))
def test_every_uvicorn_hook_authcar_replaces_still_exists(base_name: str) -> None:
    base = UVICORN_BASES[base_name]
    for hook in REPLACED_HOOKS[base_name]:
        assert callable(getattr(base, hook, None)), (
            f"{installed('uvicorn')}: {base_name}.{hook} is gone, so authcar's replacement never runs"
        )


def declared_floors() -> dict[str, str]:
    """Each direct dependency's lower bound, from pyproject.toml (runtime and test extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        match = re.match(r"([A-Za-z0-9._-]+)(?:\[[^]]*\])?\s*[^;]*?>=\s*([0-9][^,;\s]*)", spec)
        assert match, f"pyproject.toml: {spec!r} has no floor (>=)"
        floors[match.group(1)] = match.group(2)
    return floors


def version_tuple(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # 43 is 43.0.0


@pytest.mark.skipif(
    os.environ.get("AUTHCAR_EXPECT_FLOORS") != "1", reason="runs in .ci/run's venv of lowest versions"
)
def test_the_floor_venv_has_exactly_the_floors() -> None:
    # uv's lowest-direct takes a higher version when a floor cannot be installed with the others;
    # then the smoke run would not be testing the floor, so say which.
    wrong = {
        name: f"{metadata.version(name)} installed, floor {floor}"
        for name, floor in declared_floors().items()
        if version_tuple(metadata.version(name)) != version_tuple(floor)
    }
    assert not wrong, wrong


def test_the_batch_span_processors_queue_length_is_what_waits_to_be_exported() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    # A delay longer than the test: nothing leaves the queue until the flush.
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=600_000, max_export_batch_size=512)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    assert compat.batch_queue_length(processor) == 0
    for _ in range(3):
        provider.get_tracer("t").start_span("s").end()
    assert compat.batch_queue_length(processor) == 3
    processor.force_flush()
    assert compat.batch_queue_length(processor) == 0
    assert len(exporter.get_finished_spans()) == 3
    provider.shutdown()
