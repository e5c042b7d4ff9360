#!/usr/bin/env python3
"""Recompute the nf-test snapshots without nf-test, and compare them with the committed ``.snap`` files.

    .venv/bin/python -m tests.nftest_snapshots check   # one line per stale entry, exit 1 if any
    .venv/bin/python -m tests.nftest_snapshots show    # the recomputed content of every snapshot

CI has no nf-test, so a change that alters a snapshotted output (code, pinned packages, a default
parameter) left the ``.nf.test.snap`` files stale until someone ran nf-test by hand.
tests/unit/test_nftest_snapshots.py runs :func:`check` in ``make test``.

How: every ``snapshot(...)`` of every nf-test file (``modules/local/*/tests/main.nf.test``,
``tests/main.nf.test``) is read, and each argument recomputed the way nf-test would see it:

- the tasks are run as Nextflow would run them, on the same inputs: the process's ``script:`` (or
  ``stub:`` for ``options "-stub"``) is rendered from its ``main.nf`` with the ``ext.args`` of
  ``conf/modules.config`` and the params of ``nextflow.config`` + ``conf/test.config`` (nf-test.config:
  ``configFile``, profile ``test``) + the test's ``params {}``, the inputs staged as the ``input:``
  block says (``stageAs``), the setup chain (``setup { run(...) }``) first, and ``bash -ue`` runs it in
  a temporary task folder with ``bin/`` and this Python on ``PATH``. A task is run once per
  rendered script and inputs, as Nextflow caches it;
- a test that snapshots ``versions.yml`` only does not run its (slow) chain: the ``versions.yml`` line
  of the script is run alone, and every stored entry must equal it (their number is the task count);
- ``path("$outputDir/<stage>/<file>")`` of the pipeline test is the file that ``<STAGE>`` publishes,
  its inputs read from its call in ``workflows/bulk2single.nf``; ``software_versions.yml`` is made
  as the workflow makes it (one block per process, unique, sorted by text);
- a file is ``<name>:md5,<hex>`` (nf-test's form) and ``Csv.rounded(file)`` is :func:`rounded_table`,
  the Python twin of tests/lib/Csv.groovy's ``rounded``.

Only the constructs the suite uses are understood; anything else is reported as "cannot recompute",
which fails the check too, so a new kind of snapshot gets a recipe here instead of going unchecked.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.groovy_text import block_end, blocks, skip_string

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Csv.rounded: the same text as tests/lib/Csv.groovy
# ---------------------------------------------------------------------------------------------
DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][+-]?\d+)?")


def round_cell(cell: str, decimals: int) -> str:
    """A decimal number (with '.' or an exponent) to ``decimals`` places, half-even on its exact
    binary value (as Java's ``new BigDecimal(double).setScale(n, HALF_EVEN)``); anything else as it is."""
    if not DECIMAL.fullmatch(cell):
        return cell
    out = f"{float(cell):.{decimals}f}"
    return out[1:] if out.startswith("-") and not out.strip("-0.") else out


def rounded_table(path: Path, decimals: int = 8, sep: str = ",") -> str:
    """``'<name> (N decimals):md5,<hex>'``: md5 of the table with every decimal number to N places."""
    lines = [ln for ln in re.split(r"\r\n|\r|\n", Path(path).read_text()) if ln.strip()]
    text = "\n".join(sep.join(round_cell(c, decimals) for c in ln.split(sep)) for ln in lines) + "\n"
    return f"{Path(path).name} ({decimals} decimals):md5,{hashlib.md5(text.encode()).hexdigest()}"


def file_entry(path: Path) -> str:
    """nf-test's snapshot form of one file."""
    return f"{Path(path).name}:md5,{hashlib.md5(Path(path).read_bytes()).hexdigest()}"


class CannotRecompute(ValueError):
    """A construct this checker does not understand (the check fails, naming it)."""


# ---------------------------------------------------------------------------------------------
# Groovy text
# ---------------------------------------------------------------------------------------------
def call_args(text: str, open_paren: int) -> tuple[list[str], int]:
    """Top-level arguments of the call whose ``(`` is at ``open_paren``, and the index of its ``)``."""
    end = block_end(text, open_paren)
    return split_top(text[open_paren + 1:end]), end


def split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            j = skip_string(text, i)
            cur.append(text[i:j])
            i = j
            continue
        if text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
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


# ---------------------------------------------------------------------------------------------
# A small Groovy expression evaluator: what ext.args, params and scripts use
# ---------------------------------------------------------------------------------------------
class Obj(dict):
    """``a.b`` lookups (params, task, task.ext); a missing key is null, as for Nextflow's params."""


def truth(v) -> bool:
    return v not in (None, False, "", 0) and v != [] and v != {}


def gstr(v) -> str:
    """A value in a Groovy string."""
    if v is None:
        return "null"
    if v is True or v is False:
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(gstr(x) for x in v) + "]"
    return str(v)


class Expr:
    """Recursive-descent evaluation of one Groovy expression against ``env`` (name -> value)."""

    TOKEN = re.compile(r"\s*(\?:|==|!=|&&|\|\||[?:.,()\[\]{}]|\d+(?:\.\d+)?|[A-Za-z_]\w*|'''|\"\"\"|'|\")")

    def __init__(self, text: str, env: dict):
        self.s, self.i, self.env = text, 0, env

    @classmethod
    def eval(cls, text: str, env: dict):
        e = cls(text, env)
        v = e.expr()
        if e.peek() is not None:
            raise CannotRecompute(f"cannot read {text[e.i:e.i + 40]!r} in {text[:60]!r}")
        return v

    # -- tokens
    def peek(self):
        m = self.TOKEN.match(self.s, self.i)
        if not m:
            if self.s[self.i:].strip():
                raise CannotRecompute(f"cannot read {self.s[self.i:self.i + 40]!r}")
            return None
        return m.group(1)

    def take(self, want: str | None = None) -> str:
        m = self.TOKEN.match(self.s, self.i)
        if not m or (want is not None and m.group(1) != want):
            raise CannotRecompute(f"expected {want!r} at {self.s[self.i:self.i + 40]!r}")
        self.i = m.end()
        return m.group(1)

    # -- grammar
    def expr(self):
        cond = self.comparison()
        tok = self.peek()
        if tok == "?:":
            self.take()
            other = self.expr()
            return cond if truth(cond) else other
        if tok == "?":
            self.take()
            a = self.expr()
            self.take(":")
            b = self.expr()
            return a if truth(cond) else b
        return cond

    def comparison(self):
        left = self.postfix()
        tok = self.peek()
        if tok in ("==", "!="):
            self.take()
            right = self.postfix()
            return (left == right) if tok == "==" else (left != right)
        return left

    def postfix(self):
        v = self.primary()
        while self.peek() == ".":
            self.take(".")
            name = self.take()
            if self.peek() == "(":
                args, end = call_args(self.s, self.s.index("(", self.i))
                self.i = end + 1
                argv = [Expr.eval(a, self.env) for a in args]
                v = self.method(v, name, argv)
            elif isinstance(v, dict):
                v = v.get(name)
            else:
                raise CannotRecompute(f".{name} of {v!r}")
        return v

    @staticmethod
    def method(v, name: str, argv: list):
        if name == "join" and isinstance(v, list):
            return (argv[0] if argv else "").join(gstr(x) for x in v)
        if name == "trim" and isinstance(v, str):
            return v.strip()
        if name == "toLowerCase" and isinstance(v, str):
            return v.lower()
        raise CannotRecompute(f".{name}() of {type(v).__name__}")

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise CannotRecompute(f"expression ends early: {self.s[:60]!r}")
        if tok in ("'", '"', "'''", '"""'):
            start = self.s.index(tok, self.i)
            end = skip_string(self.s, start)
            self.i = end
            body = self.s[start + len(tok):end - len(tok)]
            return gstring(body, self.env) if tok.startswith('"') else unescape_single(body)
        self.take()
        if tok == "(":
            v = self.expr()
            self.take(")")
            return v
        if tok in ("[", "{"):
            end = block_end(self.s, self.i - 1)
            inner, self.i = self.s[self.i:end], end + 1
            if tok == "{":  # a closure: Nextflow calls it
                return Expr.eval(inner, self.env)
            if re.match(r"\s*\w+\s*:", inner):
                raise CannotRecompute(f"map literal [{inner[:30]}]")
            return [Expr.eval(p, self.env) for p in split_top(inner)] if inner.strip() else []
        if re.fullmatch(r"\d+(\.\d+)?", tok):
            return float(tok) if "." in tok else int(tok)
        if tok in ("null", "true", "false"):
            return {"null": None, "true": True, "false": False}[tok]
        if tok in ("file", "optional") and self.peek() == "(":
            args, end = call_args(self.s, self.s.index("(", self.i))
            self.i = end + 1
            value = Expr.eval(args[0], self.env)
            if tok == "optional" or value is None:
                return [] if not truth(value) else Path(str(value))
            return Path(str(value))
        if tok in self.env:
            return self.env[tok]
        raise CannotRecompute(f"unknown name {tok!r} in {self.s[:60]!r}")


def unescape_single(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def gstring(body: str, env: dict) -> str:
    """A double-quoted Groovy string: escapes, ``${expr}`` and ``$name.name`` interpolation."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append({"n": "\n", "t": "\t"}.get(body[i + 1], body[i + 1]))
            i += 2
        elif body.startswith("${", i):
            end = block_end(body, i + 1)
            out.append(gstr(Expr.eval(body[i + 2:end], env)))
            i = end + 1
        elif c == "$" and i + 1 < len(body) and (body[i + 1].isalpha() or body[i + 1] == "_"):
            m = re.match(r"\$([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", body[i:])
            out.append(gstr(Expr.eval(m.group(1), env)))
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# configuration: params and ext.args
# ---------------------------------------------------------------------------------------------
def read_params(body: str, env: dict) -> dict:
    """``name = expr`` statements of a ``params {}`` body (one per line)."""
    out = {}
    for m in re.finditer(r"(?m)^[ \t]*(\w+)[ \t]*=[ \t]*(.*)$", body):
        rhs = m.group(2)
        # the expression ends at a comment outside strings
        cut, i = len(rhs), 0
        while i < len(rhs):
            if rhs[i] in "'\"":
                i = skip_string(rhs, i)
                continue
            if rhs.startswith("//", i):
                cut = i
                break
            i += 1
        out[m.group(1)] = Expr.eval(rhs[:cut], env)
    return out


def config_params(test_params: str = "", output_dir: str = "") -> Obj:
    """Pipeline params as nf-test sets them: nextflow.config, the nf-test.config configFile, the test's."""
    env = {"projectDir": str(REPO), "baseDir": str(REPO), "outputDir": output_dir}
    params = Obj()
    texts = [(REPO / "nextflow.config").read_text()]
    nft = (REPO / "nf-test.config").read_text()
    cfg = re.search(r'configFile\s+"([^"]+)"', nft)
    if cfg:
        texts.append((REPO / cfg.group(1)).read_text())
    for text in texts:
        for _, body in blocks(text, r"(?m)^params"):
            params.update(read_params(body, env))
    params.update(read_params(test_params, {**env, "params": params}))
    return params


def ext_args(process: str, params: Obj) -> str | None:
    """``ext.args`` of ``withName: 'process'`` in conf/modules.config, evaluated (None: not set)."""
    text = (REPO / "conf" / "modules.config").read_text()
    value = None
    for m, body in blocks(text, r"withName\s*:\s*'([^']+)'"):
        if not re.fullmatch(m.group(1), process):
            continue
        a = re.search(r"ext\.args\s*=\s*", body)
        if a:
            start = a.end()
            rhs = body[start:block_end(body, start) + 1] if body[start] in "{[" else body[start:].splitlines()[0]
            value = Expr.eval(rhs, {"params": params})
    return value


# ---------------------------------------------------------------------------------------------
# processes: declarations and scripts
# ---------------------------------------------------------------------------------------------
@dataclass
class Decl:
    kind: str                 # path | val
    name: str
    stage_as: str | None = None
    emit: str | None = None
    optional: bool = False


@dataclass
class Process:
    name: str
    script_file: Path
    inputs: list[Decl]
    outputs: list[Decl]
    script: str
    stub: str


def _decls(section: str) -> list[Decl]:
    out = []
    for raw in section.splitlines():
        line = raw.split("//")[0].strip()
        m = re.match(r"(path|val|tuple|env|stdin|file)\b\s*(.*)$", line)
        if not m:
            continue
        parts = split_top(m.group(2))
        emit = next((re.search(r"emit\s*:\s*(\w+)", p).group(1) for p in parts if p.startswith("emit")), None)
        stage = next((re.search(r"""stageAs\s*:\s*['"]([^'"]+)""", p).group(1)
                      for p in parts if p.startswith("stageAs")), None)
        optional = any(re.match(r"optional\s*:\s*true", p) for p in parts)
        name = parts[0].strip() if parts else ""
        out.append(Decl(m.group(1), name, stage, emit, optional))
    return out


def read_process(script: Path, name: str) -> Process:
    text = script.read_text()
    for m, body in blocks(text, r"(?m)^\s*process\s+(\w+)"):
        if m.group(1) != name:
            continue
        sec = re.search(r"\n\s*input:\s*\n(.*?)\n\s*output:\s*\n(.*?)\n\s*script:\s*\n(.*?)(?:\n\s*stub:\s*\n(.*))?$",
                        body, re.S)
        if not sec:
            raise CannotRecompute(f"{script}: process {name}: no input:/output:/script: sections")
        return Process(name, script, _decls(sec.group(1)), _decls(sec.group(2)), sec.group(3), sec.group(4) or "")
    raise CannotRecompute(f"{script}: no process {name}")


def render(section: str, env: dict) -> str:
    """The bash text of a ``script:``/``stub:`` section: its ``def`` lines, then its triple-quoted string."""
    env = dict(env)
    m = re.search(r'"""', section)
    if not m:
        raise CannotRecompute("script without a triple-quoted command")
    for d in re.finditer(r"(?m)^\s*def\s+(\w+)\s*=\s*(.+)$", section[:m.start()]):
        env[d.group(1)] = Expr.eval(d.group(2), env)
    end = skip_string(section, m.start())
    return gstring(section[m.end():end - 3], env)


def versions_line(proc: Process, task_process: str, stub: bool = False) -> str:
    """The script's ``... > versions.yml`` line, rendered with ``task.process``."""
    section = proc.stub if stub else proc.script
    lines = [ln for ln in section.splitlines() if re.search(r">\s*versions\.yml", ln)]
    if len(lines) != 1:
        raise CannotRecompute(f"{proc.name}: {len(lines)} lines write versions.yml")
    return gstring(lines[0].strip(), {"task": Obj(process=task_process, ext=Obj())})


# ---------------------------------------------------------------------------------------------
# running tasks
# ---------------------------------------------------------------------------------------------
def _task_env(task_dir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(REPO / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PYTHONNOUSERSITE="1", MPLBACKEND="Agg", OMP_WAIT_POLICY="PASSIVE",
               MPLCONFIGDIR=str(task_dir / ".cache" / "matplotlib"))
    env.setdefault("NUMBA_CACHE_DIR", str(task_dir.parent / "numba_cache"))
    return env


@dataclass
class Runner:
    """Runs tasks in folders under ``root``, each (script, inputs) once."""

    root: Path
    done: dict = field(default_factory=dict)

    def bash(self, command: str, label: str) -> Path:
        key = hashlib.md5(command.encode()).hexdigest()
        if key in self.done:
            return self.done[key]
        task = self.root / f"{label.lower()}-{key[:10]}"
        task.mkdir(parents=True, exist_ok=True)
        (task / ".command.sh").write_text(command)
        res = subprocess.run(["bash", "-ue", ".command.sh"], cwd=task, env=_task_env(task),
                             capture_output=True, text=True)
        if res.returncode != 0:
            tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{label} failed (exit {res.returncode}) in {task}: {tail}")
        self.done[key] = task
        return task

    def task(self, proc: Process, task_process: str, inputs: list, params: Obj, stub: bool = False) -> dict:
        """Run ``proc`` on ``inputs`` (Path, [] or value per input); ``{emit or index: [Path, ...]}``."""
        if len(inputs) != len(proc.inputs):
            raise CannotRecompute(f"{proc.name} takes {len(proc.inputs)} inputs, got {len(inputs)}")
        env = {"params": params, "task": Obj(process=task_process, ext=Obj(args=ext_args(proc.name, params)))}
        staging = []
        for decl, value in zip(proc.inputs, inputs):
            if decl.kind == "val":
                env[decl.name] = value
            elif decl.kind in ("path", "file"):
                if value == []:
                    env[decl.name] = ""
                    continue
                if not isinstance(value, Path):
                    raise CannotRecompute(f"{proc.name} input {decl.name}: not a file ({value!r})")
                staged = (decl.stage_as.replace("*", value.name) if decl.stage_as and "*" in decl.stage_as
                          else decl.stage_as or value.name)
                env[decl.name] = staged
                staging.append((staged, value))
            else:
                raise CannotRecompute(f"{proc.name}: {decl.kind} inputs")
        body = render(proc.stub if stub else proc.script, env)
        stage = "".join(f"mkdir -p '{os.path.dirname(s) or '.'}' && ln -sf '{v.resolve()}' '{s}'\n"
                        for s, v in staging)
        # the inputs' content in the key: a task is reused only for the same inputs
        digest = "".join(f"# {s} {hashlib.md5(v.read_bytes()).hexdigest()}\n" for s, v in staging)
        task = self.bash(digest + stage + body, proc.name)
        out = {}
        for i, decl in enumerate(proc.outputs):
            if decl.kind != "path":
                raise CannotRecompute(f"{proc.name}: output {decl.kind}({decl.name})")
            pattern = Expr.eval(decl.name, env) if decl.name[0] in "'\"" else decl.name
            items = sorted(Path(p) for p in glob.glob(str(task / pattern)))
            if not items and not decl.optional:
                raise RuntimeError(f"{proc.name}: no output {pattern} in {task}")
            if len(items) > 1:  # nf-test would show one item holding a list of files
                raise CannotRecompute(f"{proc.name}: output {pattern} matches {len(items)} files")
            out[str(i)] = items
            if decl.emit:
                out[decl.emit] = items
        return out


# ---------------------------------------------------------------------------------------------
# nf-test files
# ---------------------------------------------------------------------------------------------
@dataclass
class Each:
    """Every stored entry of a list must equal ``value`` (a versions.yml of N tasks not run here)."""

    value: str


def _process_outputs_from_setups(expr: str, setups: dict):
    m = re.fullmatch(r"\s*(\w+)\.out\.(\w+)\s*", expr)
    if not m or m.group(1) not in setups:
        return None
    items = setups[m.group(1)].get(m.group(2))
    if items is None:
        raise CannotRecompute(f"{expr.strip()}: no such output")
    if len(items) != 1:
        raise CannotRecompute(f"{expr.strip()}: {len(items)} items (one expected)")
    return items[0]


def mapping_values(mapping: str, env: dict, setups: dict) -> list:
    heads = list(re.finditer(r"(?m)^\s*input\[(\d+)\]\s*=\s*", mapping))
    values = {}
    for k, h in enumerate(heads):
        expr = mapping[h.end():(heads[k + 1].start() if k + 1 < len(heads) else len(mapping))].strip()
        from_setup = _process_outputs_from_setups(expr, setups)
        values[int(h.group(1))] = from_setup if from_setup is not None else Expr.eval(expr, env)
    return [values[i] for i in sorted(values)]


def workflow_name(wf: str) -> str:
    """The named workflow of workflows/bulk2single.nf: the prefix of ``task.process`` in the pipeline."""
    m = re.search(r"(?m)^workflow\s+(\w+)", wf)
    if not m:
        raise CannotRecompute("workflows/bulk2single.nf: no named workflow")
    return m.group(1)


class Suite:
    """Recomputes the snapshots of the nf-test files; tasks shared across tests."""

    def __init__(self, root: Path):
        self.runner = Runner(root)
        self.root = root

    # ---- one test
    def recompute(self, test_file: Path, test_name: str, text: str | None = None) -> list:
        """The ``content`` list nf-test stores for ``test_name`` of ``test_file`` (its text: ``text``)."""
        text = test_file.read_text() if text is None else text
        body = next((b for m, b in blocks(text, r'\btest\s*\(\s*"([^"]+)"\s*\)') if m.group(1) == test_name), None)
        if body is None:
            raise CannotRecompute(f"{test_file}: no test '{test_name}'")
        snaps = list(re.finditer(r"\bsnapshot\s*\(", body))
        if len(snaps) != 1:
            raise CannotRecompute(f"'{test_name}': {len(snaps)} snapshot() calls")
        args, end = call_args(body, snaps[0].end() - 1)
        if not body[end + 1:].lstrip().startswith(".match()"):
            raise CannotRecompute(f"'{test_name}': snapshot(...) without .match()")
        ctx = _TestContext(self, test_file, text, body)
        return [ctx.value(a) for a in args]

    def pipeline_task(self, name: str, params: Obj, cache: dict) -> dict:
        """Outputs of process ``name`` as the pipeline runs it (its call in workflows/bulk2single.nf)."""
        if name in cache:
            return cache[name]
        wf = (REPO / "workflows" / "bulk2single.nf").read_text()
        calls = list(re.finditer(rf"(?m)^\s*{name}\s*\(", wf))
        if len(calls) != 1:
            raise CannotRecompute(f"workflows/bulk2single.nf: {len(calls)} calls of {name}")
        args, _ = call_args(wf, calls[0].end() - 1)
        include = re.search(rf"include\s*{{\s*{name}\s*}}\s*from\s*'([^']+)'", wf)
        proc = read_process((REPO / "workflows" / (include.group(1) + "/main.nf")).resolve(), name)
        inputs = []
        for a in args:
            m = re.fullmatch(r"(\w+)\.out\.(\w+)", a.strip())
            if m:
                items = self.pipeline_task(m.group(1), params, cache)[m.group(2)]
                if len(items) != 1:
                    raise CannotRecompute(f"{a}: {len(items)} items")
                inputs.append(items[0])
            else:
                inputs.append(Expr.eval(re.sub(r",\s*checkIfExists\s*:\s*true", "", a), {"params": params}))
        cache[name] = self.runner.task(proc, f"{workflow_name(wf)}:{name}", inputs, params)
        return cache[name]


class _TestContext:
    def __init__(self, suite: Suite, test_file: Path, text: str, body: str):
        self.suite, self.test_file, self.text, self.body = suite, test_file, text, body
        self.pipeline = text.lstrip().startswith("nextflow_pipeline")
        self.stub = bool(re.search(r'options\s+"[^"]*-stub', body))
        when = blocks(body, r"\bwhen")
        self.when = when[0][1] if when else ""
        tparams = blocks(self.when, r"\bparams")
        self.params = config_params(tparams[0][1] if tparams else "", output_dir=str(suite.root / "outputDir"))
        self.env = {"projectDir": str(REPO), "baseDir": str(REPO), "params": self.params,
                    "outputDir": str(suite.root / "outputDir")}
        if not self.pipeline:
            script = re.search(r'^\s*script\s+"([^"]+)"', text, re.M).group(1)
            pname = re.search(r'^\s*process\s+"(\w+)"', text, re.M).group(1)
            self.proc = read_process((test_file.parent / script).resolve(), pname)
        self._outputs = None
        self._pipe_cache: dict = {}

    # ---- the tested process's outputs, run once per test
    def outputs(self) -> dict:
        if self._outputs is None:
            setups: dict = {}
            for _, setup in blocks(self.body, r"\bsetup"):
                for rm, run in blocks(setup, r'\brun\s*\(\s*"(\w+)"\s*\)'):
                    sm = re.search(r'\bscript\s+"([^"]+)"', run)
                    path = (self.test_file.parent / sm.group(1)).resolve() if sm else self.proc.script_file
                    proc = read_process(path, rm.group(1))
                    mapping = re.search(r'"""(.*?)"""', blocks(run, r"\bprocess")[0][1], re.S).group(1)
                    setups[rm.group(1)] = self.suite.runner.task(
                        proc, rm.group(1), mapping_values(mapping, self.env, setups), self.params, stub=self.stub)
            pb = blocks(self.when, r"\bprocess")
            mapping = re.search(r'"""(.*?)"""', pb[0][1], re.S).group(1) if pb else ""
            self._outputs = self.suite.runner.task(self.proc, self.proc.name, mapping_values(mapping, self.env, setups),
                                                   self.params, stub=self.stub)
        return self._outputs

    def versions_only(self) -> bool:
        args, _ = call_args(self.body, re.search(r"\bsnapshot\s*\(", self.body).end() - 1)
        return all(re.fullmatch(r"process\.out\.versions", a.strip()) for a in args)

    # ---- one snapshot() argument
    def value(self, arg: str):
        a = arg.strip()
        m = re.fullmatch(r"Csv\.rounded\((.*)\)", a, re.S)
        if m:
            parts = split_top(m.group(1))
            decimals = int(parts[1]) if len(parts) > 1 else 8
            return rounded_table(self.file_of(parts[0]), decimals)
        if a == "process.out":
            out = self.outputs()
            return {k: [file_entry(f) for f in v] for k, v in out.items()}
        m = re.fullmatch(r"process\.out\.(\w+)", a)
        if m:
            if m.group(1) == "versions" and self.versions_only():
                task_process = self.proc.name
                line = versions_line(self.proc, task_process, self.stub)
                task = self.suite.runner.bash(line + "\n", f"versions-{task_process}")
                return Each(file_entry(task / "versions.yml"))
            return [file_entry(f) for f in self.outputs()[m.group(1)]]
        if a.startswith("path("):
            return file_entry(self.file_of(a))
        raise CannotRecompute(f"snapshot argument {a!r}")

    def file_of(self, expr: str) -> Path:
        e = expr.strip()
        m = re.fullmatch(r"process\.out\.(\w+)\[(\d+)\]", e)
        if m:
            return self.outputs()[m.group(1)][int(m.group(2))]
        m = re.fullmatch(r'path\("\$outputDir/([^"]+)"\)', e)
        if m and self.pipeline:
            return self.published(m.group(1))
        raise CannotRecompute(f"file {e!r}")

    def published(self, rel: str) -> Path:
        """A file of the pipeline test's outdir: ``<process lower>/<name>`` or pipeline_info/software_versions.yml."""
        if rel == "pipeline_info/software_versions.yml":
            return self.software_versions()
        stage, _, name = rel.partition("/")
        outs = self.suite.pipeline_task(stage.upper(), self.params, self._pipe_cache)
        hits = [f for items in outs.values() for f in items if f.name == name]
        if not hits:
            raise CannotRecompute(f"{rel}: not an output of {stage.upper()}")
        return hits[0]

    def software_versions(self) -> Path:
        """As workflows/bulk2single.nf makes it: the versions.yml of every process mixed into ch_versions,
        unique texts, sorted, concatenated."""
        wf = (REPO / "workflows" / "bulk2single.nf").read_text()
        names = re.findall(r"ch_versions\s*=\s*ch_versions\.mix\((\w+)\.out\.versions\)", wf)
        made = (r"ch_versions\s*\.map\s*\{\s*it\.text\s*\}\s*\.unique\(\)\s*"
                r"\.collectFile\(name:\s*'software_versions\.yml',\s*sort:\s*true\)")
        if not re.search(made, wf):
            raise CannotRecompute("workflows/bulk2single.nf: software_versions.yml is not made as this checker assumes")
        texts = set()
        for name in names:
            include = re.search(rf"include\s*{{\s*{name}\s*}}\s*from\s*'([^']+)'", wf)
            proc = read_process((REPO / "workflows" / (include.group(1) + "/main.nf")).resolve(), name)
            line = versions_line(proc, f"{workflow_name(wf)}:{name}")
            task = self.suite.runner.bash(line + "\n", f"versions-{name}")
            texts.add((task / "versions.yml").read_text())
        out = self.suite.root / "software_versions" / "software_versions.yml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(sorted(texts)))
        return out


# ---------------------------------------------------------------------------------------------
# comparing
# ---------------------------------------------------------------------------------------------
def nftest_files() -> list[Path]:
    return sorted((REPO / "modules" / "local").glob("*/tests/main.nf.test")) + [REPO / "tests" / "main.nf.test"]


def compare(stored, recomputed, where: str) -> list[str]:
    """One line per difference between a stored snapshot value and the recomputed one."""
    if isinstance(recomputed, Each):
        if not isinstance(stored, list) or not stored:
            return [f"{where}: stored {json.dumps(stored)}, recomputed one or more of {recomputed.value}"]
        return [f"{where}[{i}]: stored {s}, recomputed {recomputed.value}" for i, s in enumerate(stored)
                if s != recomputed.value]
    if isinstance(recomputed, dict):
        if not isinstance(stored, dict) or set(stored) != set(recomputed):
            return [f"{where}: stored keys {sorted(stored) if isinstance(stored, dict) else stored}, "
                    f"recomputed {sorted(recomputed)}"]
        return [line for k in sorted(recomputed) for line in compare(stored[k], recomputed[k], f"{where}.{k}")]
    if isinstance(recomputed, list):
        if not isinstance(stored, list) or len(stored) != len(recomputed):
            return [f"{where}: stored {json.dumps(stored)}, recomputed {json.dumps(recomputed)}"]
        return [line for i, (s, r) in enumerate(zip(stored, recomputed)) for line in compare(s, r, f"{where}[{i}]")]
    if stored == recomputed:
        return []
    return [f"{where}: stored {json.dumps(stored)}, recomputed {json.dumps(recomputed)}"]


def check_snapshot(suite: Suite, test_file: Path, snap_file: Path | None = None, only: str | None = None,
                   text: str | None = None) -> list[str]:
    """Problems of one ``.snap`` (default: the committed one beside ``test_file``), or of its test
    ``only``; ``text``: the nf-test file's text, if not the committed one."""
    snap_file = snap_file or test_file.with_name(test_file.name + ".snap")
    stored = json.loads(snap_file.read_text())
    rel = test_file.relative_to(REPO)
    problems = []
    for name, entry in stored.items():
        if only is not None and name != only:
            continue
        try:
            recomputed = suite.recompute(test_file, name, text)
        except CannotRecompute as err:
            problems.append(f"{rel} '{name}': cannot recompute: {err}")
            continue
        problems += compare(entry["content"], recomputed, f"{rel} '{name}' content")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["check", "show"])
    ap.add_argument("--keep", help="run the tasks in this folder and keep it")
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nftest-snapshots-"))
    suite = Suite(root)
    try:
        if args.command == "show":
            for t in nftest_files():
                for name in json.loads(t.with_name(t.name + ".snap").read_text()):
                    value = suite.recompute(t, name)
                    print(json.dumps({"file": str(t.relative_to(REPO)), "test": name, "content": value},
                                     default=lambda o: f"each: {o.value}", indent=4))
            return 0
        problems = [p for t in nftest_files() for p in check_snapshot(suite, t)]
        print("\n".join(problems) if problems else "every snapshot is current")
        return 1 if problems else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
