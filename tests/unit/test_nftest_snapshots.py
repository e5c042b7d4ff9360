"""The committed nf-test snapshots are current: each one recomputed without nf-test (CI has none).

tests/nftest_snapshots.py runs the snapshotted tasks of every nf-test (same inputs, params and
ext.args as nf-test; PREPARE_INPUTS, ESTIMATE_FRACTIONS, PREPROCESS and the TRAIN_VAE stub, plus
the versions.yml lines) and compares each snapshot entry with the committed ``.nf.test.snap``.
A change that alters a snapshotted output without `nf-test test --update-snapshot` fails here.
The tests of the test below show that a stale snapshot, a stale versions entry and a changed
parameter are each caught, and that the rounded form of float tables (tests/lib/Csv.groovy) hides
last-bit noise but not a real change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import nftest_snapshots as ns

CASES = [(t, name) for t in ns.nftest_files() for name in json.loads(t.with_name(t.name + ".snap").read_text())]
PREPROCESS = ns.REPO / "modules" / "local" / "preprocess" / "tests" / "main.nf.test"
ESTIMATE = ns.REPO / "modules" / "local" / "estimate_fractions" / "tests" / "main.nf.test"
GENERATE = ns.REPO / "modules" / "local" / "generate" / "tests" / "main.nf.test"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> ns.Suite:
    """One task folder for the module: each task runs once, whichever test needs it first."""
    return ns.Suite(tmp_path_factory.mktemp("nftest_snapshots"))


def _snap(test_file: Path) -> dict:
    return json.loads(test_file.with_name(test_file.name + ".snap").read_text())


def _label(test_file: Path) -> str:
    return "pipeline" if test_file.parent.parent == ns.REPO else test_file.parent.parent.name


@pytest.mark.parametrize(("test_file", "name"), CASES, ids=[f"{_label(t)}: {n}" for t, n in CASES])
def test_committed_snapshot_is_current(suite, test_file: Path, name: str):
    problems = ns.check_snapshot(suite, test_file, only=name)
    hint = ("\n(versions.yml holds the Python and package versions: an environment other than the pinned "
            "one of `make env` changes it too)" if any("versions.yml" in p for p in problems) else "")
    assert not problems, ("stale snapshot (run `nf-test test --update-snapshot "
                          f"{test_file.relative_to(ns.REPO)}` and commit the .snap), or a construct to teach "
                          "tests/nftest_snapshots.py:\n" + "\n".join(problems) + hint)


def test_every_snapshotting_test_is_covered():
    """Every nf-test file has its .snap here, so a new test's snapshot is checked as soon as it is committed."""
    assert len(ns.nftest_files()) == 9
    for t in ns.nftest_files():
        if re.search(r"snapshot\s*\(", t.read_text()):
            assert t.with_name(t.name + ".snap").exists(), t
    assert len(CASES) == 10


# ---------------------------------------------------------------------------------------------
# tests of the test: stale snapshots fail
# ---------------------------------------------------------------------------------------------
def _stale_copy(tmp_path: Path, test_file: Path, edit) -> Path:
    snap = _snap(test_file)
    edit(snap)
    out = tmp_path / (test_file.name + ".snap")
    out.write_text(json.dumps(snap, indent=4))
    return out


def _flip_last_hex(entry: str) -> str:
    return entry[:-1] + ("0" if entry[-1] != "0" else "1")


def test_a_stale_table_entry_fails(suite, tmp_path):
    name = "bundled data - prepared by PREPARE_INPUTS"
    content = _snap(PREPROCESS)[name]["content"]
    stale = _stale_copy(tmp_path, PREPROCESS, lambda s: s[name]["content"].__setitem__(0, _flip_last_hex(content[0])))
    problems = ns.check_snapshot(suite, PREPROCESS, stale)
    assert len(problems) == 1, problems
    assert "'bundled data - prepared by PREPARE_INPUTS' content[0]" in problems[0]
    assert content[0] in problems[0]  # the recomputed value is the committed one


def test_the_snapshot_that_drifted_fails(suite, tmp_path):
    """PREPROCESS's snapshot before the rounded form: the raw md5 of bulk_profiles.csv from an AVX2
    machine (010957d3; this CSV's last bits depend on numpy's SIMD loops)."""
    name = "bundled data - prepared by PREPARE_INPUTS"
    old = [["bulk_profiles.csv:md5,010957d3bdab6843186296030b2a0c5f"],
           ["versions.yml:md5,70cefcfeab7c9c5f9a355456ca708afc"]]
    stale = _stale_copy(tmp_path, PREPROCESS, lambda s: s[name].__setitem__("content", old))
    problems = ns.check_snapshot(suite, PREPROCESS, stale)
    assert len(problems) == 1 and "content[0]" in problems[0] and "010957d3" in problems[0], problems


def test_a_stale_versions_entry_fails_in_a_test_that_is_not_run(suite, tmp_path):
    """GENERATE's test is too slow to run here: each of its versions.yml entries is still checked."""
    name = "both bundled groups - chained from PREPARE_INPUTS to TRAIN_VAE"
    stale = _stale_copy(tmp_path, GENERATE,
                        lambda s: s[name]["content"][0].__setitem__(1, _flip_last_hex(s[name]["content"][0][1])))
    problems = ns.check_snapshot(suite, GENERATE, stale)
    assert len(problems) == 1 and "content[0][1]" in problems[0], problems


def test_a_changed_parameter_makes_the_committed_snapshot_stale(suite):
    """The change side: the same nf-test with another --scale_size gives other cell targets, so the
    committed snapshot no longer matches (what a changed default would do without --update-snapshot)."""
    name = "bundled data - prepared by PREPARE_INPUTS"
    text = ESTIMATE.read_text()
    changed = text.replace('outdir = "$outputDir"', 'outdir = "$outputDir"\n                scale_size = 3', 1)
    assert changed != text
    problems = ns.check_snapshot(suite, ESTIMATE, only=name, text=changed)
    assert [p for p in problems if "content[2]" in p and "cell_targets.csv" in p], problems
    assert not [p for p in problems if "content[0]" in p or "content[1]" in p], problems  # fractions unchanged


# ---------------------------------------------------------------------------------------------
# the rounded form of float tables (Csv.rounded)
# ---------------------------------------------------------------------------------------------
# Outputs of tests/lib/Csv.groovy's roundCell(cell, 8) for these cells (run with nf-test 0.9.5's Groovy).
GROOVY_ROUNDCELL = {
    "-1e-12": "0.00000000", "1.5e3": "1500.00000000", "0.123456785": "0.12345678", "0.125000005": "0.12500000",
    "-0.000000004": "0.00000000", "1e5": "100000.00000000", "135": "135", "abc": "abc", "1.": "1.00000000",
    ".5": "0.50000000", "2.5E-9": "0.00000000", "NaN": "NaN",
}


@pytest.mark.parametrize("cell", sorted(GROOVY_ROUNDCELL))
def test_round_cell_matches_the_groovy_helper(cell):
    assert ns.round_cell(cell, 8) == GROOVY_ROUNDCELL[cell]


def test_python_and_groovy_use_one_number_pattern():
    groovy = (ns.REPO / "tests" / "lib" / "Csv.groovy").read_text()
    m = re.search(r"cell ==~ /(.+?)/\)\)", groovy)
    assert m and m.group(1) == ns.DECIMAL.pattern


def test_rounded_table_hides_last_bits_not_changes(tmp_path):
    def table(values):
        p = tmp_path / "t.csv"
        p.write_text("gene,a,n\n" + "".join(f"g{i},{v!r},{i}\n" for i, v in enumerate(values)))
        return ns.rounded_table(p)

    base = [0.19576514289487293, 2.338644519367505, 1.0e-3]
    assert table(base) == table([0.19576514289487287, 2.3386445193675045, 1.0e-3])  # 1-2 ulp apart
    assert table(base) != table([0.19576514289487293 + 1e-7, 2.338644519367505, 1.0e-3])
    assert table(base).startswith("t.csv (8 decimals):md5,")
