"""The stage scripts and what the pipeline passes them (issue 27).

An argument the pipeline always passes (conf/modules.config ext.args outside a ``params.x ? ... : ''``
condition, or written in the module's script block) is required by the script and has no default
there, so the only default is the pipeline's (nextflow.config / nextflow_schema.json); one passed
only conditionally is optional. Each script parses its arguments and makes one call into ``b2s``:
it defines ``build_parser``, ``parse_args`` and ``main`` only, and ``main`` is one statement. The
options dataclass it fills keeps the command line's order (the recorded ``params`` follow it).
"""

from __future__ import annotations

import ast
import dataclasses

import pytest

from tests.helpers import REPO, ext_args, load_script, module_args, pipeline_args

PROCESSES = ["PREPARE_INPUTS", "ESTIMATE_FRACTIONS", "PREPROCESS", "TRAIN_VAE", "GENERATE", "FILTER", "QC", "REPORT"]


def passed(process: str) -> tuple[str, set[str], set[str]]:
    """(script, options always passed, options passed only under a condition) of ``process``."""
    script, always, conditional = module_args(process)
    always, conditional = set(always), set(conditional)
    for option, _, unconditional in ext_args(process):
        (always if unconditional else conditional).add(option)
    assert not always & conditional, f"{process}: {always & conditional} both always and conditionally passed"
    return script, always, conditional


def actions(script: str) -> dict[str, object]:
    """The script's argparse actions by destination (``--help`` left out)."""
    parser = load_script(f"bin/{script}").build_parser()
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("process", PROCESSES)
def test_always_passed_arguments_are_required_without_a_default(process):
    script, always, conditional = passed(process)
    acts = actions(script)
    assert always | conditional <= set(acts), f"{script} lacks {sorted((always | conditional) - set(acts))}"
    for name in sorted(always):
        assert acts[name].required, f"{script} --{name}: always passed by {process}, so required"
        assert acts[name].default is None, f"{script} --{name}: always passed, so no default ({acts[name].default!r})"
    for name in sorted(conditional):
        assert not acts[name].required, f"{script} --{name}: passed only conditionally by {process}, so optional"
    required = {d for d, a in acts.items() if a.required}
    assert required <= always, f"{script}: {sorted(required - always)} required but not always passed by {process}"


@pytest.mark.parametrize("process", PROCESSES)
def test_the_pipeline_defaults_parse(process):
    """The always-passed arguments with the pipeline's defaults (tests.helpers.pipeline_args) parse."""
    script, always, _ = passed(process)
    argv = pipeline_args(process)
    for name in sorted(always - {a[2:] for a in argv if a.startswith("--")}):
        argv += [f"--{name}", "x"]
    load_script(f"bin/{script}").parse_args(argv)


@pytest.mark.parametrize("process", PROCESSES)
def test_stage_script_parses_and_makes_one_call(process):
    script = passed(process)[0]
    tree = ast.parse((REPO / "bin" / script).read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert set(defs) <= {"build_parser", "parse_args", "main"}, f"{script} defines {sorted(defs)}"
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.If)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)), \
            f"{script} line {node.lineno}: only imports, the docstring, functions and the __main__ guard"
    body = [n for n in defs["main"].body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call), \
        f"{script}: main() is one call into b2s"


@pytest.mark.parametrize("process", PROCESSES)
def test_options_keep_the_command_line_order(process):
    """The options dataclass has the parser's arguments in their order: the recorded params do too."""
    script = passed(process)[0]
    mod = load_script(f"bin/{script}")
    options = [v for k, v in vars(mod).items() if k.endswith("Options") and dataclasses.is_dataclass(v)]
    assert len(options) == 1, f"{script}: one options dataclass imported, found {len(options)}"
    assert [f.name for f in dataclasses.fields(options[0])] == list(actions(script))
