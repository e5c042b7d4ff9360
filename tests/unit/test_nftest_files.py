"""The nf-test suite stays runnable: a static stand-in for `nf-test test`, which CI cannot install.

Each `process { \"\"\"...\"\"\" }` block of a module test (the tested process and every `setup { run() }`)
is read as the channel expressions it gives to `input[i]`, and checked against the `input:` block of
the process it feeds: the number of inputs, the shape of each (a tuple of N elements, a path, a
value), the outputs it takes from setup processes (`X.out.emit`), and the file names Nextflow would
stage into one task folder (two inputs with one name stop the run with "input file name collision",
which is how three module tests failed under a real nf-test 0.9.5). Also: snapshots exist for every
test that matches one, params are pipeline parameters, and a bare `nf-test test` finds every test.
tests/unit/test_nftest_selfcheck.py shows these checks fail on today's broken tests.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.groovy_text import block_end, blocks, skip_string
from tests.pipeline.nfrun import nftest_pipeline_paths

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.parent for p in (REPO / "modules" / "local").glob("*/main.nf"))
MODULE_TESTS = [m / "tests" / "main.nf.test" for m in MODULES]


# --------------------------------------------------------------------------------------------
# Groovy text: blocks and strings
# --------------------------------------------------------------------------------------------
def split_top(text: str, sep: str = ",") -> list[str]:
    """``text`` split on ``sep`` outside brackets and strings."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            j = skip_string(text, i)
            cur.append(text[i:j])
            i = j
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def triple_quoted(body: str) -> str:
    m = re.search(r'"""(.*?)"""', body, re.S)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------------------------
# process declarations
# --------------------------------------------------------------------------------------------
@dataclass
class Decl:
    """One input/output declaration: kind 'path' | 'val' | 'tuple' | 'env' | 'stdin'."""

    kind: str
    name: str = ""
    stage_as: str | None = None
    elements: list["Decl"] = field(default_factory=list)
    emit: str | None = None


def _element(text: str) -> Decl:
    m = re.match(r"(\w+)\s*\((.*)\)\s*$", text.strip(), re.S)
    if not m:
        raise ValueError(f"cannot read tuple element {text!r}")
    kind, args = m.group(1), split_top(m.group(2))
    stage = next((re.search(r"""stageAs\s*:\s*['"]([^'"]+)""", a).group(1) for a in args[1:] if "stageAs" in a), None)
    return Decl(kind, args[0].strip("'\" "), stage)


def _declarations(section: str) -> list[Decl]:
    out = []
    for raw in section.splitlines():
        line = raw.split("//")[0].strip()
        m = re.match(r"(path|val|tuple|env|stdin|file)\b\s*(.*)$", line)
        if not m:
            continue
        kind, rest = m.group(1), m.group(2)
        parts = split_top(rest)
        emit = next((re.search(r"emit\s*:\s*(\w+)", p).group(1) for p in parts if p.startswith("emit")), None)
        stage = next((re.search(r"""stageAs\s*:\s*['"]([^'"]+)""", p).group(1) for p in parts if p.startswith("stageAs")), None)
        if kind == "tuple":
            elems = [_element(p) for p in parts if not re.match(r"(emit|optional|topic)\s*:", p)]
            out.append(Decl("tuple", elements=elems, emit=emit))
        else:
            out.append(Decl("path" if kind == "file" else kind, parts[0].strip("'\" ") if parts else "", stage, emit=emit))
    return out


@dataclass
class Process:
    name: str
    inputs: list[Decl]
    outputs: dict[str, Decl]


def read_process(script: Path, name: str | None = None) -> Process:
    """The ``input:``/``output:`` declarations of process ``name`` (default: the first) in ``script``."""
    text = script.read_text()
    for m, body in blocks(text, r"(?m)^\s*process\s+(\w+)"):
        if name and m.group(1) != name:
            continue
        sec = re.search(r"\n\s*input:\s*\n(.*?)\n\s*output:\s*\n(.*?)\n\s*(?:when|script|shell|exec|stub):", body, re.S)
        if not sec:
            raise ValueError(f"{script}: process {m.group(1)} has no input:/output: blocks")
        outs = {d.emit: d for d in _declarations(sec.group(2)) if d.emit}
        return Process(m.group(1), _declarations(sec.group(1)), outs)
    raise ValueError(f"{script}: no process {name}")


# --------------------------------------------------------------------------------------------
# shapes of channel expressions given to input[i]
# --------------------------------------------------------------------------------------------
@dataclass
class Shape:
    """What one channel item looks like.

    kind: 'file' (one path, ``names`` holds its possible names), 'files' (a list of paths staged
    together, ``names`` all of them), 'list' (``items``), 'map', 'val', 'empty' ([] = no file),
    'unknown' (the checker cannot tell; ``why`` says what).
    """

    kind: str
    names: list[str] = field(default_factory=list)
    items: list["Shape"] = field(default_factory=list)
    why: str = ""


UNKNOWN = lambda why: Shape("unknown", why=why)  # noqa: E731


def _out_shape(decl: Decl) -> Shape:
    def one(d: Decl) -> Shape:
        if d.kind == "path":
            return Shape("files" if "*" in d.name else "file", names=[d.name])
        return Shape("val")
    return Shape("list", items=[one(e) for e in decl.elements]) if decl.kind == "tuple" else one(decl)


@dataclass
class Context:
    """Where one mapping lives: setup processes run before it (name -> Process) and problems found."""

    test_dir: Path
    setups: dict[str, Process]
    errors: list[str]
    unknown: list[str]


def _as_list(s: Shape) -> list[Shape]:
    return s.items if s.kind == "list" else [s]


def _flat_names(s: Shape) -> list[str]:
    if s.kind in ("file", "files"):
        return list(s.names)
    if s.kind == "list":
        return [n for i in s.items for n in _flat_names(i)]
    return []


def _chain(shape: Shape, method: str, args: str, ctx: Context) -> Shape:
    """Item shape after ``.method(args)`` (Nextflow channel operators used by the tests)."""
    if method in ("unique", "first", "last", "view"):
        return shape
    if method == "join":
        other = parse_expr(args, ctx)
        if shape.kind != "list" or other.kind != "list":
            return UNKNOWN(f"join of non-tuples {shape.kind}/{other.kind}")
        return Shape("list", items=shape.items + other.items[1:])
    if method == "combine":
        return Shape("list", items=_as_list(shape) + _as_list(parse_expr(args, ctx)))
    if method == "mix":
        alts = [shape] + [parse_expr(a, ctx) for a in split_top(args)]
        if all(a.kind in ("file", "files") for a in alts):
            return Shape("file", names=[n for a in alts for n in a.names])
        return Shape("unknown", items=alts, why="mix of non-files")
    if method in ("collect", "toList", "toSortedList"):
        names = _flat_names(shape) if shape.kind != "unknown" else []
        if shape.kind == "unknown" and shape.items:
            names = [n for a in shape.items for n in _flat_names(a)]
        return Shape("files", names=names) if names or shape.kind in ("file", "files") else UNKNOWN("collect of non-files")
    if method == "flatten":
        return Shape("file", names=_flat_names(shape)) if _flat_names(shape) else UNKNOWN("flatten of non-files")
    if method == "map":
        m = re.fullmatch(r"\s*\{\s*(\w+(?:\s*,\s*\w+)*)\s*->\s*(\w+)\s*\}\s*", args)
        if m and shape.kind == "list":
            params = [p.strip() for p in m.group(1).split(",")]
            if m.group(2) in params and len(params) == len(shape.items):
                return shape.items[params.index(m.group(2))]
        return UNKNOWN(f"map {args.strip()[:40]}")
    if method == "collectFile":
        m = re.search(r"""name\s*:\s*['"]([^'"]+)['"]""", args)
        return Shape("file", names=[m.group(1)]) if m else UNKNOWN("collectFile without name")
    return UNKNOWN(f".{method}()")


def parse_expr(expr: str, ctx: Context) -> Shape:
    """Shape of one item of the channel (or value) that ``expr`` gives to a process input."""
    s = expr.strip()
    if s == "[]":
        return Shape("empty")
    if s.startswith("["):
        end = block_end(s, 0)
        if s[end + 1:].strip():
            return UNKNOWN(f"expression after list: {s[end + 1:].strip()[:30]}")
        parts = split_top(s[1:end])
        if parts and re.match(r"^['\"]?\w+['\"]?\s*:", parts[0]):
            return Shape("map")
        return Shape("list", items=[parse_expr(p, ctx) for p in parts])
    if s[0] in "'\"":
        return Shape("val") if skip_string(s, 0) == len(s) else UNKNOWN(s[:30])
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return Shape("val")
    m = re.match(r"file\s*\(", s)
    if m:
        end = block_end(s, m.end() - 1)
        arg = split_top(s[m.end():end])[0].strip()
        path = arg.strip("'\"")
        local = re.sub(r"^\$\{?projectDir\}?/", "", path)
        if local != path and not (REPO / local).exists():
            ctx.errors.append(f"file {local} does not exist")
        shape, rest = Shape("file", names=[os.path.basename(path)]), s[end + 1:]
    else:
        m = re.match(r"(?:Channel|channel)\.(of|value|empty|fromList)\s*\(", s)
        if m:
            end = block_end(s, m.end() - 1)
            args = split_top(s[m.end():end])
            if m.group(1) == "empty":
                shape = Shape("empty")
            elif m.group(1) == "fromList":
                shape = UNKNOWN("fromList")
            else:
                items = [parse_expr(a, ctx) for a in args]
                kinds = {i.kind for i in items}
                shape = items[0] if len(kinds) == 1 else UNKNOWN("Channel.of with mixed items")
            rest = s[end + 1:]
        else:
            m = re.match(r"(\w+)\.out\.(\w+)", s)
            if not m:
                return UNKNOWN(s[:40])
            proc, emit = m.group(1), m.group(2)
            if proc not in ctx.setups:
                ctx.errors.append(f"{proc}.out.{emit}: {proc} is not run in this test's setup")
                return UNKNOWN(f"{proc} not set up")
            if emit not in ctx.setups[proc].outputs:
                ctx.errors.append(f"{proc}.out.{emit}: {proc} has no output '{emit}' "
                                  f"(emits: {', '.join(ctx.setups[proc].outputs)})")
                return UNKNOWN(f"{proc}.out.{emit}")
            shape, rest = _out_shape(ctx.setups[proc].outputs[emit]), s[m.end():]
    while rest.strip():
        r = rest.lstrip()
        m = re.match(r"\.\s*(\w+)\s*", r)
        if not m:
            return UNKNOWN(f"cannot read {r[:30]!r}")
        method, after = m.group(1), r[m.end():]
        if after.startswith("("):
            end = block_end(after, 0)
            args, after = after[1:end], after[end + 1:]
        elif after.startswith("{"):
            end = block_end(after, 0)
            args, after = after[:end + 1], after[end + 1:]
        else:
            args = ""
        if shape.kind == "empty" and method == "mix":
            parts = split_top(args)
            shape, args = parse_expr(parts[0], ctx), ",".join(parts[1:])
            if not args:
                rest = after
                continue
        shape = _chain(shape, method, args, ctx)
        rest = after
    return shape


# --------------------------------------------------------------------------------------------
# checking one `process { """...""" }` mapping against the process it feeds
# --------------------------------------------------------------------------------------------
def mapping_inputs(mapping: str) -> list[tuple[int, str]]:
    """``[(i, expression)]`` for every ``input[i] = expression`` of a mapping."""
    heads = list(re.finditer(r"(?m)^\s*input\[(\d+)\]\s*=\s*", mapping))
    return [(int(h.group(1)), mapping[h.end():(heads[k + 1].start() if k + 1 < len(heads) else len(mapping))].strip())
            for k, h in enumerate(heads)]


def _staged(decl: Decl, shape: Shape) -> list[str]:
    """File names (relative to the task folder) that ``shape`` stages through a path declaration."""
    names = shape.names if shape.kind in ("file", "files") else (
        [n for i in shape.items for n in _flat_names(i)] if shape.kind == "list" else [])
    if shape.kind == "file" and len(shape.names) > 1:
        names = []  # one file per item, of several possible names: no fixed set to compare
    if decl.stage_as is None:
        return names
    if "*" in decl.stage_as or "?" in decl.stage_as:
        return [re.sub(r"\*|\?", n, decl.stage_as, count=1) for n in names]
    return [decl.stage_as] * len(names)


def _check_value(decl: Decl, shape: Shape, where: str, ctx: Context, staged: list[tuple[str, str]]) -> None:
    if shape.kind == "unknown":
        ctx.unknown.append(f"{where}: {shape.why}")
        return
    if decl.kind == "tuple":
        if shape.kind != "list":
            ctx.errors.append(f"{where}: the process takes a tuple of {len(decl.elements)} "
                              f"({', '.join(f'{e.kind}({e.name})' for e in decl.elements)}), the test gives a {shape.kind}")
            return
        if len(shape.items) != len(decl.elements):
            ctx.errors.append(f"{where}: the process takes a tuple of {len(decl.elements)} "
                              f"({', '.join(f'{e.kind}({e.name})' for e in decl.elements)}), the test gives {len(shape.items)} elements")
            return
        for k, (e, item) in enumerate(zip(decl.elements, shape.items)):
            _check_value(e, item, f"{where}[{k}] {e.kind}({e.name})", ctx, staged)
    elif decl.kind == "path":
        bad = [i.kind for i in ([shape] if shape.kind != "list" else shape.items) if i.kind not in ("file", "files", "empty")]
        if bad:
            ctx.errors.append(f"{where}: the process takes path {decl.name}, the test gives {', '.join(bad)}")
            return
        staged.extend((n, where) for n in _staged(decl, shape))


def check_mapping(proc: Process, mapping: str, label: str, ctx: Context) -> None:
    """Problems of one mapping against ``proc``'s ``input:`` block, appended to ``ctx``."""
    given = mapping_inputs(mapping)
    idx = [i for i, _ in given]
    want = len(proc.inputs)
    if sorted(idx) != list(range(want)):
        ctx.errors.append(f"{label}: {proc.name} takes {want} input(s), the test sets input{sorted(idx)}")
    staged: list[tuple[str, str]] = []
    for i, expr in given:
        if i >= want:
            continue
        decl = proc.inputs[i]
        where = f"{label} input[{i}] ({decl.kind} {decl.name or ', '.join(e.name for e in decl.elements)})"
        _check_value(decl, parse_expr(expr, ctx), where, ctx, staged)
    seen: dict[str, str] = {}
    for name, where in staged:
        if name in seen:
            first, second = (w.removeprefix(f"{label} ") for w in (seen[name], where))
            ctx.errors.append(f"{label}: input file name collision: '{name}' is staged by {first} and by {second}")
        else:
            seen[name] = where


def check_nftest(text: str, test_dir: Path) -> tuple[list[str], list[str]]:
    """``(errors, not understood)`` for an nf-test file ``text`` located in ``test_dir``."""
    errors: list[str] = []
    unknown: list[str] = []
    suite = re.search(r'^\s*script\s+"([^"]+)"', text, re.M)
    pname = re.search(r'^\s*process\s+"(\w+)"', text, re.M)
    if not suite or not pname:
        return [f"no script/process declared in {test_dir}"], []
    script = (test_dir / suite.group(1)).resolve()
    if not script.exists():
        return [f"script {suite.group(1)} does not exist"], []
    try:
        tested = read_process(script, pname.group(1))
    except ValueError as err:
        return [str(err)], []
    known_params = pipeline_params()
    for m, body in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)'):
        test = m.group(1)
        ctx = Context(test_dir, {}, errors, unknown)
        for _, setup in blocks(body, r"\bsetup"):
            for rm, run in blocks(setup, r'\brun\s*\(\s*"(\w+)"(?:\s*,\s*alias\s*:\s*"(\w+)")?\s*\)'):
                name, alias = rm.group(1), rm.group(2)
                sm = re.search(r'\bscript\s+"([^"]+)"', run)
                path = (test_dir / sm.group(1)).resolve() if sm else script
                if not path.exists():
                    errors.append(f"{test}: setup {name}: script {sm.group(1)} does not exist")
                    continue
                try:
                    proc = read_process(path, name)
                except ValueError as err:
                    errors.append(f"{test}: setup {name}: {err}")
                    continue
                if alias:
                    errors.append(f"{test}: setup {name} as {alias}: conf/modules.config selects processes by "
                                  f"name (withName), so an alias runs without its ext.args")
                for _, pb in blocks(run, r"\bprocess"):
                    check_mapping(proc, triple_quoted(pb), f"{test}: setup {name}", ctx)
                ctx.setups[alias or name] = proc
        for _, when in blocks(body, r"\bwhen"):
            for _, pb in blocks(when, r"\bprocess"):
                check_mapping(tested, triple_quoted(pb), f"{test}: {tested.name}", ctx)
            for _, pp in blocks(when, r"\bparams"):
                for key in re.findall(r"(?m)^\s*(\w+)\s*=", pp):
                    if key not in known_params:
                        errors.append(f"{test}: params.{key} is not a pipeline parameter (nextflow.config)")
        used = set(re.findall(r"process\.out\.(\w+)", body))
        if used - set(tested.outputs):
            errors.append(f"{test}: {tested.name} has no output(s) {sorted(used - set(tested.outputs))}")
    return errors, unknown


def pipeline_params() -> set[str]:
    text = (REPO / "nextflow.config").read_text()
    _, body = blocks(text, r"(?m)^params")[0]
    return set(re.findall(r"(?m)^\s*(\w+)\s*=", body))


def snapshot_problems(test_file: Path) -> list[str]:
    """Tests that match a snapshot without a stored one, and stored snapshots of no test."""
    text = test_file.read_text()
    names = [m.group(1) for m, _ in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)')]
    with_snap = {m.group(1) for m, body in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)')
                 if re.search(r"snapshot\s*\(", body)}
    snap = test_file.with_name(test_file.name + ".snap")
    stored = set(json.loads(snap.read_text())) if snap.exists() else set()
    problems = [f"{test_file.relative_to(REPO)}: test '{t}' matches a snapshot but {snap.name} has none "
                "(run: nf-test test --update-snapshot " + str(test_file.relative_to(REPO)) + ")"
                for t in sorted(with_snap - stored)]
    problems += [f"{snap.relative_to(REPO)}: snapshot '{t}' belongs to no test" for t in sorted(stored - set(names))]
    return problems


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------
def test_every_module_has_an_nftest():
    assert MODULES, "no local modules found"
    missing = [m.name for m in MODULES if not (m / "tests" / "main.nf.test").exists()]
    assert not missing


@pytest.mark.parametrize("test_file", MODULE_TESTS, ids=lambda p: p.parent.parent.name)
def test_module_nftest_inputs_match_the_processes(test_file: Path):
    errors, unknown = check_nftest(test_file.read_text(), test_file.parent)
    assert not errors, "\n".join(errors)
    # every input must be understood, or the checks above would pass on what they cannot read
    assert not unknown, "the stand-in cannot read: " + "; ".join(unknown)


@pytest.mark.parametrize("test_file", MODULE_TESTS, ids=lambda p: p.parent.parent.name)
def test_module_nftest_exercises_the_real_process(test_file: Path):
    """Not only stubs: at least one test runs the process's script, and asserts on its outputs."""
    text = test_file.read_text()
    real = [m.group(1) for m, body in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)') if "-stub" not in body]
    assert real, f"{test_file.relative_to(REPO)}: every test is a stub"
    assert 'script "../main.nf"' in text


@pytest.mark.parametrize("test_file", MODULE_TESTS + [REPO / "tests" / "main.nf.test"],
                         ids=lambda p: p.parent.parent.name if p.parent.name == "tests" and p.parent.parent != REPO else "pipeline")
def test_snapshots_exist_for_tests_that_match_them(test_file: Path):
    problems = snapshot_problems(test_file)
    assert not problems, "\n".join(problems)


def test_bare_nftest_finds_every_test():
    """`nf-test test` with no argument runs the tests under testsDir: it must hold them all."""
    config = (REPO / "nf-test.config").read_text()
    tests_dir = (REPO / re.search(r'testsDir\s+"([^"]+)"', config).group(1)).resolve()
    for t in MODULE_TESTS + [REPO / "tests" / "main.nf.test"]:
        assert tests_dir in t.resolve().parents, f"{t.relative_to(REPO)} is outside testsDir {tests_dir}"
    # ... and nothing else: nf-test runs every *.nf.test under testsDir (fixtures are .txt)
    found = set()
    for root, dirs, files in os.walk(tests_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "work"]
        found |= {Path(root, f).resolve() for f in files if f.endswith((".nf.test", ".groovy.test"))}
    expected = {t.resolve() for t in MODULE_TESTS + [REPO / "tests" / "main.nf.test"]}
    assert found == expected, f"unexpected nf-test files: {sorted(map(str, found - expected))}"
    lib = re.search(r'libDir\s+"([^"]+)"', config)
    helpers = {"H5ad", "Csv"} & set(re.findall(r"\b(H5ad|Csv)\.", "".join(t.read_text() for t in MODULE_TESTS)))
    for h in helpers:
        assert lib and (REPO / lib.group(1) / f"{h}.groovy").exists(), f"tests use {h} but libDir lacks {h}.groovy"
    work = re.search(r'workDir\s+"([^"]+)"', config).group(1)
    assert f"{work.removeprefix('./')}/" in (REPO / ".gitignore").read_text().split(), f"{work} is not in .gitignore"


def test_pipeline_nftest_targets_main_and_published_folders():
    text = (REPO / "tests" / "main.nf.test").read_text()
    assert 'script "../main.nf"' in text
    folders = {p.split("/")[0] for p in nftest_pipeline_paths()}
    publish = {m.name for m in MODULES} | {"pipeline_info"}
    assert folders <= publish, folders - publish
    for _, body in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)'):
        for _, pp in blocks(body, r"\bparams"):
            assert set(re.findall(r"(?m)^\s*(\w+)\s*=", pp)) <= pipeline_params()
