"""What can be checked about containers and execution profiles without a container engine or GPU:
hadolint on the Dockerfile, the image's dependency list against the CI environment, the build
scripts, the Singularity definition, the resolved run options of the engine+gpu profiles, the
test profiles' params against the schema, and tower.yml. The image itself is tested with a real
engine in tests/container (make test-image)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

import b2s.head.params as bp
import b2s.head.schema as bschema

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
IMAGE_REPO = "ghcr.io/nf-bulk2single/nf-bulk2single"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a pinned requirements list (``name==version`` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: not pinned: {line}"
        pins[_canon(name)] = version.strip()
    return pins


@lru_cache(maxsize=None)
def flat_config(profiles: str) -> dict[str, str]:
    """``nextflow config -flat -profile <profiles>`` as ``{key: raw value}`` (one call per combination)."""
    proc = subprocess.run(["nextflow", "config", "-flat", "-profile", profiles, str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([\w.'\-:]+) = (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def unquote(raw: str) -> str:
    assert raw.startswith("'") and raw.endswith("'"), raw
    return raw[1:-1]


def config_params(cfg: dict[str, str]) -> dict:
    """The ``params.*`` entries of a flat config as Python values."""
    out = {}
    for key, raw in cfg.items():
        if not key.startswith("params."):
            continue
        if raw == "null":
            val = None
        elif raw in ("true", "false"):
            val = raw == "true"
        elif raw.startswith("'"):
            val = unquote(raw)
        else:
            val = json.loads(raw)
        out[key[len("params."):]] = val
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines()
                                          if not ln.lstrip().startswith("#")))
    return [(ln.split()[0].upper(), " ".join(ln.split()[1:])) for ln in text.splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------
def test_hadolint_passes_with_no_ignored_rule():
    hadolint = Path(sys.executable).parent / "hadolint"
    config = CONTAINERS / ".hadolint.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["failure-threshold"] == "warning"
    assert settings["ignored"] == []
    proc = subprocess.run([str(hadolint), "--config", str(config), "-f", "json", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [f for f in json.loads(proc.stdout) if f["level"] in ("warning", "error")] == []


def test_dockerfile_needs_no_registry_frontend():
    # A `# syntax=` directive makes BuildKit pull its frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.M | re.I)
    # The wheelhouse is a BuildKit cache mount (built-in frontend), never a layer.
    assert "--mount=type=cache,id=nf-bulk2single-wheels,target=/wheels,sharing=locked" in DOCKERFILE.read_text()


def test_dockerfile_installs_exactly_requirements_in_a_multistage_build():
    ins = dockerfile_instructions()
    froms = [args for op, args in ins if op == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]
    arg_base = next(args for op, args in ins if op == "ARG" and args.startswith("BASE_IMAGE="))
    assert arg_base == "BASE_IMAGE=nf-bulk2single-base:bookworm"
    runs = [args for op, args in ins if op == "RUN"]
    copies = [args for op, args in ins if op == "COPY"]
    assert copies == ["certs/ /usr/local/share/ca-certificates/site/", "requirements.txt /tmp/requirements.txt",
                      "--from=builder /opt/venv /opt/venv"]
    assert "python3 -m venv /opt/venv" in runs
    install = [r for r in runs if "pip install" in r]
    assert len(install) == 1
    assert ("pip download --no-cache-dir --no-deps --progress-bar off -d /wheels -r /tmp/requirements.txt && "
            "pip install --no-cache-dir --no-index --find-links /wheels -r /tmp/requirements.txt && pip check") in install[0]
    final = ins[[i for i, (op, _) in enumerate(ins) if op == "FROM"][1]:]
    # Nothing is installed from Debian in the Dockerfile (the base has python3, procps, CAs) ...
    assert not any("apt-get" in args for op, args in ins if op == "RUN")
    # ... and the final import check runs on a throwaway /tmp, so no cache folder is baked in.
    (check,) = [args for op, args in final if op == "RUN"]
    assert check.startswith("--mount=type=tmpfs,target=/tmp ") and "import torch, scanpy" in check
    assert not any(op == "USER" for op, _ in ins)


def test_base_is_made_from_debian_packages_alone():
    text = (CONTAINERS / "base.sh").read_text()
    assert re.search(r"^PACKAGES=python3,python3-venv,ca-certificates,procps$", text, re.M)
    assert "debootstrap --variant=minbase" in text and '"$DOCKER" import' in text
    assert "update-ca-certificates" in text and "--one-file-system" in text


def test_image_build_is_keyed_on_its_inputs_and_sends_a_minimal_context():
    text = (CONTAINERS / "image.sh").read_text()
    # The tag hashes the Dockerfile, requirements.txt, the base image id, the site CAs, the version.
    assert re.search(r'sha256sum <"\$here/Dockerfile"; sha256sum <"\$repo/requirements.txt"; echo "\$base_id"', text)
    assert 'image inspect "$tag"' in text and "build skipped" in text
    # The context is a fresh folder with requirements.txt and certs/ only.
    assert 'cp "$repo/requirements.txt" "$ctx/"' in text and 'mkdir "$ctx/certs"' in text
    assert not re.search(r'cp -r|rsync|"\$repo"\s*$', text, re.M)


def test_make_targets_and_ci():
    make = subprocess.run(["make", "-n", "image", "test-image"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "MAKEFLAGS"})
    assert make.returncode == 0, make.stderr
    assert "containers/engine.sh run containers/image.sh" in make.stdout
    assert "B2S_IMAGE=ghcr.io/nf-bulk2single/nf-bulk2single:0.1.0" in make.stdout
    assert "pytest tests/container" in make.stdout
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index('part "make test" make test') < ci.index('part "make test-image" make test-image')


def test_dockerfile_env_labels_and_version_match_the_config():
    text = DOCKERFILE.read_text()
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", text, re.M))
    assert env["PATH"].startswith("/opt/venv/bin:") and env["HOME"] == "/tmp"  # writable for any uid
    # No fixed cache folder in the image: the pipeline puts them in each task's folder.
    assert "MPLCONFIGDIR" not in env and "NUMBA_CACHE_DIR" not in env
    cfg_env = flat_config("docker")
    assert unquote(cfg_env["env.MPLCONFIGDIR"]) == "$PWD/.cache/matplotlib"
    assert unquote(cfg_env["env.NUMBA_CACHE_DIR"]) == "$PWD/.cache/numba"
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', text))
    for key in ("version", "source", "description", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cfg = flat_config("docker,gpu")
    version = unquote(cfg["manifest.version"])
    assert re.search(rf"^ARG VERSION={re.escape(version)}$", text, re.M)
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert unquote(cfg["process.container"]) == f"{IMAGE_REPO}:{version}"
    assert labels["org.opencontainers.image.source"] == unquote(cfg["manifest.homePage"])


def test_image_requirements_equal_the_ci_environment():
    """The image installs requirements.txt; the CI env is requirements.txt + requirements-dev.txt.
    `pip freeze --all`: pip and setuptools are pinned too (torch needs setuptools)."""
    runtime = read_pins(REPO / "requirements.txt")
    dev = read_pins(REPO / "requirements-dev.txt")
    assert not set(runtime) & set(dev)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    installed = {}
    for line in freeze.splitlines():
        name, sep, version = line.partition("==")
        assert sep, f"pip freeze: not a pinned release: {line}"
        installed[_canon(name)] = version
    assert {k: v for k, v in installed.items() if k not in dev} == runtime
    assert {k: installed.get(k) for k in dev} == dev
    assert runtime["torch"] and runtime["jsonschema"] and runtime["pip"] and runtime["setuptools"]


def test_singularity_definition_bootstraps_from_the_published_image():
    text = (CONTAINERS / "bulk2single.def").read_text()
    lines = text.splitlines()
    assert lines[0] == "Bootstrap: docker"
    assert lines[1] == f"From: {unquote(flat_config('docker,gpu')['process.container'])}"
    sections = re.findall(r"^%(\w+)", text, re.M)
    assert {"labels", "environment", "test", "help"} <= set(sections)
    assert "export PATH=/opt/venv/bin:$PATH" in text
    assert "MPLCONFIGDIR" not in text.split("%environment")[1].split("%test")[0]  # no shared /tmp cache


def test_containers_readme_documents_build_push_and_gpu_checks():
    text = (CONTAINERS / "README.md").read_text()
    for needle in ("make image", "make test-image", "-f containers/Dockerfile", "docker push", "ghcr.io",
                   "docker login ghcr.io", "docker://ghcr.io/nf-bulk2single/nf-bulk2single:0.1.0",
                   "singularity build", "apptainer build", "containers/bulk2single.def",
                   "torch.cuda.is_available()", "--gpus all", "--nv", "SITE_CA=", "BASE_CA=", "docker save",
                   "docker load", "docker-archive", "-profile podman"):
        assert needle in text, needle


# --------------------------------------------------------------------------------------------
# profiles (one `nextflow config -flat` per combination)
# --------------------------------------------------------------------------------------------
def test_docker_gpu_profile():
    cfg = flat_config("docker,gpu")
    assert cfg["docker.enabled"] == "true"
    opts = unquote(cfg["docker.runOptions"])
    assert "--gpus all" in opts and "-u $(id -u):$(id -g)" in opts
    for engine in ("singularity", "apptainer", "podman"):
        assert cfg[f"{engine}.enabled"] == "false"
    assert cfg["process.'withLabel:process_gpu'.accelerator"] == "1"
    # Profiles change no params: -profile docker,gpu runs with the schema's defaults.
    schema = bschema.load_schema(REPO / "nextflow_schema.json")
    defaults = {k: v for k, v in bschema.schema_defaults(schema).items()}
    assert config_params(cfg) == defaults


def test_podman_gpu_profile():
    cfg = flat_config("podman,gpu")
    assert cfg["podman.enabled"] == "true"
    assert unquote(cfg["podman.runOptions"]) == "--device nvidia.com/gpu=all"
    for engine in ("docker", "singularity", "apptainer"):
        assert cfg[f"{engine}.enabled"] == "false"
    assert unquote(cfg["process.container"]).startswith(IMAGE_REPO + ":")


def test_singularity_gpu_profile_with_test_params():
    cfg = flat_config("singularity,gpu,test")
    assert cfg["singularity.enabled"] == "true" and cfg["singularity.autoMounts"] == "true"
    assert unquote(cfg["singularity.runOptions"]) == "--nv"
    assert cfg["docker.enabled"] == "false" and cfg["apptainer.enabled"] == "false"
    assert cfg["process.'withLabel:process_gpu'.accelerator"] == "1"
    # The bundled test profile's params pass the pipeline's own validation (files exist).
    schema = bschema.load_schema(REPO / "nextflow_schema.json")
    res = bp.validate_params(config_params(cfg), schema, schema_dir=REPO)
    assert res.errors == [] and res.warnings == []


def test_apptainer_gpu_profile_with_test_full_params():
    cfg = flat_config("apptainer,gpu,test_full")
    assert cfg["apptainer.enabled"] == "true" and cfg["apptainer.autoMounts"] == "true"
    assert unquote(cfg["apptainer.runOptions"]) == "--nv"
    assert cfg["docker.enabled"] == "false" and cfg["singularity.enabled"] == "false"
    params = config_params(cfg)
    # The seed's dentate gyrus tutorial, from public URLs.
    assert params["bulk"].startswith("https://") and params["bulk"].endswith("GSE74985_mergedCount.txt.gz")
    assert params["reference"].startswith("https://") and params["reference"].endswith("10X43_1.h5ad")
    assert params["gene_map"].startswith("https://") and params["gene_map"].endswith("pair_GRCm39.tsv")
    assert params["bulk_group"] == "dg_d_1,dg_d_2,dg_d_3"
    assert params["celltype_key"] == "clusters" and params["epoch_num"] == 3500
    assert "internet" in (REPO / "conf" / "test_full.config").read_text().lower()
    schema = bschema.load_schema(REPO / "nextflow_schema.json")
    res = bp.validate_params(params, schema, schema_dir=REPO)
    assert res.errors == [] and res.warnings == []


def test_train_vae_carries_the_gpu_label():
    text = (REPO / "modules" / "local" / "train_vae" / "main.nf").read_text()
    assert re.search(r"^\s*label 'process_gpu'", text, re.M)


# --------------------------------------------------------------------------------------------
# Seqera Platform
# --------------------------------------------------------------------------------------------
def test_tower_yml_lists_the_report():
    reports = yaml.safe_load((REPO / "tower.yml").read_text())["reports"]
    assert "report/bulk2single_report.html" in reports
    assert all(v.get("display") for v in reports.values())
    # The report is published where tower.yml says: <outdir>/report/ (publishDir per process name).
    modules = (REPO / "conf" / "modules.config").read_text()
    assert "task.process.tokenize(':')[-1].toLowerCase()" in modules
    report_nf = (REPO / "modules" / "local" / "report" / "main.nf").read_text()
    assert "process REPORT" in report_nf and "bulk2single_report.html" in report_nf


@pytest.mark.parametrize("key", ["name", "version", "description", "nextflowVersion", "mainScript"])
def test_manifest_block(key):
    cfg = flat_config("docker,gpu")
    assert unquote(cfg[f"manifest.{key}"])
    assert unquote(cfg["manifest.mainScript"]) == "main.nf" and (REPO / "main.nf").exists()
    assert unquote(cfg["manifest.nextflowVersion"]).startswith("!>=")
