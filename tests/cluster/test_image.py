"""The container recipe can work: read as Docker reads it (tests/cluster/dockerfile.py), the image
has a CUDA compiler matching torch's CUDA, compiles gsplat's extension at build, installs only the
tested, pinned package set, has wget for KubeRay's probes, ships every package the project installs,
and bakes the Anny cache where every manifest looks for it.

Each ``check_*`` is a function of the files' text, so it can be run on any revision of them."""

from __future__ import annotations

import re
import shlex

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cluster import dockerfile as df
from tests.cluster.manifests import (
    CLUSTER,
    CPU_CONSTRAINTS,
    DOCKERFILE,
    IMAGE_CONSTRAINTS,
    REPO,
    env_of,
    header_value,
    manifests,
    pins,
    pod_templates,
    pyproject,
    ray_cluster_spec,
    ray_containers,
    runtime_requirements,
)

IMAGE_CONSTRAINTS_IN_REPO = IMAGE_CONSTRAINTS.relative_to(REPO).as_posix()
#: pip options whose next argument is their value, not a requirement.
_PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                      "--no-binary", "--only-binary", "-t", "--target", "--prefix", "--root", "--platform", "--python-version"}  # fmt: skip


def _options_and_requirements(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({option: [values]}, [requirements])`` of a ``pip install``'s arguments."""
    options: dict[str, list[str]] = {}
    requirements, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name in _PIP_VALUE_OPTIONS and not eq:
                i += 1
                value = args[i]
            options.setdefault(name, []).append(value)
        else:
            requirements.append(arg)
        i += 1
    return options, requirements


def _final_stage(dockerfile: str) -> df.Stage:
    return df.parse(dockerfile)[-1]


# ---- the checks ---------------------------------------------------------------------------


def check_base_image_has_a_compiler(dockerfile: str, image_pins: dict[str, str]) -> None:
    stage = _final_stage(dockerfile)
    repository, _, tag = stage.image.partition(":")
    devel = repository.endswith("nvidia/cuda") and "devel" in tag.split("-")
    nvcc = any(p.startswith(("cuda-nvcc", "cuda-toolkit")) for p in df.apt_packages(stage))
    assert devel or nvcc, (
        f"the image is built FROM {stage.image}: no nvcc (a -devel CUDA image, or cuda-nvcc from apt) for gsplat's extension"
    )
    # An extension must be compiled by the CUDA version torch was built with (major.minor here).
    base_cuda = re.match(r"(\d+\.\d+)", tag)
    torch_cuda = re.match(r"(\d+\.\d+)", image_pins["cuda-toolkit"])
    assert base_cuda and torch_cuda and base_cuda.group(1) == torch_cuda.group(1), (
        f"base image CUDA {tag} but torch {image_pins['torch']} is built with CUDA {image_pins['cuda-toolkit']} ({IMAGE_CONSTRAINTS_IN_REPO})"
    )


def _names(requirements: list[str]) -> set[str]:
    """Canonical package names of pip requirements (local paths such as ``.[gpu]`` left out)."""
    return {canonicalize_name(Requirement(r).name) for r in requirements if not r.startswith(".")}


def check_gsplat_compiled_at_build(dockerfile: str) -> None:
    stage = _final_stage(dockerfile)
    installs = [(instruction, command, args, *_options_and_requirements(args)) for instruction, command, args in df.pip_installs(stage)]
    builds = [(position, install) for position, install in enumerate(installs) if "gsplat" in _names(install[4])]
    assert builds, "no `pip install gsplat` in the image: it would come from '.[gpu]' as PyPI's wheel, which compiles on first use"
    for position, (instruction, command, args, options, _) in builds:
        where = f"`pip install {shlex.join(args)}`"
        no_binary = {v for values in options.get("--no-binary", []) for v in values.split(",")}
        assert no_binary & {"gsplat", ":all:"}, f"{where} takes PyPI's gsplat wheel (no --no-binary gsplat): no compiled extension"
        assert "--no-build-isolation" in options, f"{where}: gsplat must build against the image's torch (--no-build-isolation)"
        env = {**instruction.env, **command.assignments}
        assert env.get("BUILD_NO_CUDA", "0") != "1", f"{where}: BUILD_NO_CUDA=1 builds gsplat without its CUDA code"
        assert env.get("TORCH_CUDA_ARCH_LIST"), f"{where}: no GPU at build time, so TORCH_CUDA_ARCH_LIST must name the GPUs to compile for"
        assert any("torch" in _names(earlier[4]) for earlier in installs[:position]), (
            f"{where}: gsplat's build imports torch, install it before"
        )
    checks = [c for i in stage.instructions if i.keyword == "RUN" for c in df.commands(i) if any("gsplat.csrc" in a for a in c.argv)]
    assert checks, "the build should fail when gsplat ends up without gsplat.csrc (its compiled extension)"


def check_pip_installs_pinned(dockerfile: str, image_pins: dict[str, str]) -> None:
    stage = _final_stage(dockerfile)
    copied = [i for i in stage.instructions if i.keyword == "COPY" and IMAGE_CONSTRAINTS_IN_REPO in i.args.split()[:-1]]
    installs = df.pip_installs(stage)
    assert installs, "the image installs nothing with pip"
    for instruction, _, args in installs:
        options, requirements = _options_and_requirements(args)
        where = f"`pip install {shlex.join(args)}`"
        for index_option in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links"):
            assert index_option not in options, (
                f"{where}: {IMAGE_CONSTRAINTS_IN_REPO} was resolved against PyPI alone, not {options[index_option]}"
            )
        constrained = IMAGE_CONSTRAINTS_IN_REPO in options.get("-c", []) + options.get("--constraint", [])
        if constrained:
            assert copied and stage.instructions.index(copied[0]) < stage.instructions.index(instruction), (
                f"{where}: {IMAGE_CONSTRAINTS_IN_REPO} is not copied in before"
            )
        for text in requirements:
            if text.startswith("."):
                assert constrained, f"{where}: the project's dependencies are unpinned without -c {IMAGE_CONSTRAINTS_IN_REPO}"
                continue
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            exact = [s.version for s in requirement.specifier if s.operator == "=="]
            if exact and name in image_pins:
                assert exact[0] == image_pins[name], f"{where}: {text} but {IMAGE_CONSTRAINTS_IN_REPO} pins {image_pins[name]}"
            assert exact or (constrained and name in image_pins), (
                f"{where}: {text} is not pinned (inline or by {IMAGE_CONSTRAINTS_IN_REPO})"
            )


def check_wget(dockerfile: str) -> None:
    assert "wget" in df.apt_packages(_final_stage(dockerfile)), "KubeRay's readiness/liveness probes run wget: install it with apt-get"


def check_python(dockerfile: str, resolved_for: str) -> None:
    """The image's Python is the one the constraints were resolved for (``cp311`` -> python3.11)."""
    match = re.match(r"cp(\d)(\d+)", resolved_for)
    assert match, resolved_for
    python = f"python{match.group(1)}.{match.group(2)}"
    stage = _final_stage(dockerfile)
    assert {python, f"{python}-dev"} <= df.apt_packages(stage), (
        f"{IMAGE_CONSTRAINTS_IN_REPO} is for {python}: install it (and its headers, for gsplat)"
    )
    venvs = [c for i in stage.instructions if i.keyword == "RUN" for c in df.commands(i) if c.argv[1:3] == ["-m", "venv"]]
    assert venvs and all(c.argv[0] == python for c in venvs), f"the venv must be made with {python}"


def check_project_packages_copied(dockerfile: str, include: list[str]) -> None:
    """Every package pyproject installs is copied into the image (avatar_forge holds the CLI)."""
    sources = {s.rstrip("/") for i in _final_stage(dockerfile).instructions if i.keyword == "COPY" for s in i.args.split()[:-1]}
    for pattern in include:
        package = pattern.rstrip("*").rstrip(".")
        assert package in sources or "." in sources, f"{package}/ is not copied into the image, so `pip install .` leaves it out"


def check_anny_cache(dockerfile: str, kuberay: dict[str, dict], launcher: str) -> None:
    stage = _final_stage(dockerfile)
    builds = [i for i in stage.instructions if i.keyword == "RUN" and any("build_body_model" in a for c in df.commands(i) for a in c.argv)]
    assert builds, "the image does not build the Anny model"
    baked = builds[0].env.get("ANNY_CACHE_DIR")
    assert baked, "the Anny model is built with no ANNY_CACHE_DIR set, so the cache lands in root's home"
    assert stage.instructions[-1].env.get("ANNY_CACHE_DIR") == baked, "ANNY_CACHE_DIR changes after the Anny model is built"
    for name, manifest in kuberay.items():
        for group, container in ray_containers(manifest):
            where = f"{name} {group}"
            assert env_of(container).get("ANNY_CACHE_DIR") == baked, (
                f"{where}: ANNY_CACHE_DIR={env_of(container).get('ANNY_CACHE_DIR')}, the image built it in {baked}"
            )
            for mount in container.get("volumeMounts", []):
                path = mount["mountPath"].rstrip("/")
                assert not (baked == path or baked.startswith(path + "/")), (
                    f"{where}: the volume at {path} hides the Anny cache baked into {baked}"
                )
        if manifest["kind"] == "RayJob":
            env_vars = (yaml.safe_load(manifest["spec"].get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {})
            assert env_vars.get("ANNY_CACHE_DIR", baked) == baked, (
                f"{name}: runtime env ANNY_CACHE_DIR={env_vars['ANNY_CACHE_DIR']}, the image built it in {baked}"
            )
    for value in re.findall(r"ANNY_CACHE_DIR=(\S+)", launcher):
        assert value.strip("'\"") == baked, f"aws.yaml sets ANNY_CACHE_DIR={value}, the image built it in {baked}"


# ---- the tests ----------------------------------------------------------------------------


def test_dockerfile_reader():
    text = """# comment
ARG BASE=nvidia/cuda:13.0.1-devel-ubuntu22.04
FROM ${BASE} AS build
ENV A=1 \\
    B="two words"
# a comment inside the continued RUN is dropped, as Docker does
RUN X="$A" apt-get install -y --no-install-recommends \\
        wget curl \\
    && python -m pip install -c c.txt 'pkg[extra]==1.0' ; echo "a && b"
FROM ubuntu:22.04
COPY --from=build /opt /opt
"""
    build, final = df.parse(text)
    assert (build.image, build.name, final.image) == ("nvidia/cuda:13.0.1-devel-ubuntu22.04", "build", "ubuntu:22.04")
    run = build.instructions[-1]
    assert run.env == {"A": "1", "B": "two words"}
    apt, _pip, echo = df.commands(run)
    assert apt.assignments == {"X": "1"} and apt.argv[-2:] == ["wget", "curl"]
    assert df.apt_packages(build) == {"wget", "curl"} and df.apt_packages(final) == set()
    assert [args for _, _, args in df.pip_installs(build)] == [["-c", "c.txt", "pkg[extra]==1.0"]]
    assert echo.argv == ["echo", "a && b"]


def test_base_image_has_a_compiler_matching_torchs_cuda():
    check_base_image_has_a_compiler(DOCKERFILE.read_text(), pins(IMAGE_CONSTRAINTS))


def test_gsplat_cuda_extension_is_compiled_at_build():
    check_gsplat_compiled_at_build(DOCKERFILE.read_text())


def test_every_pip_install_is_pinned_by_the_image_constraints():
    check_pip_installs_pinned(DOCKERFILE.read_text(), pins(IMAGE_CONSTRAINTS))


def test_wget_is_installed_for_kuberays_probes():
    check_wget(DOCKERFILE.read_text())


def test_python_is_the_one_the_constraints_are_for():
    check_python(DOCKERFILE.read_text(), header_value(IMAGE_CONSTRAINTS, "resolved-for").split()[0])


def test_image_holds_every_package_the_project_installs():
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    check_project_packages_copied(DOCKERFILE.read_text(), include)


def test_anny_cache_baked_into_the_image_is_the_one_every_manifest_uses():
    check_anny_cache(DOCKERFILE.read_text(), manifests(), (CLUSTER / "aws.yaml").read_text())


def test_image_constraints_are_the_tested_set():
    image, tested = pins(IMAGE_CONSTRAINTS), pins(CPU_CONSTRAINTS)
    # One tested set: wherever both files pin a package, the version is the same.
    differ = {name: (tested[name], image[name]) for name in image.keys() & tested.keys() if image[name] != tested[name]}
    assert not differ, f"constraints/cpu.txt vs {IMAGE_CONSTRAINTS_IN_REPO}: {differ}"
    assert {"torch", "ray", "gsplat", "diffusers", "smplx", "mediapipe", "anny"} <= image.keys() & tested.keys()
    # Everything '.[gpu]' asks for is pinned, at a version its requirement allows.
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in image, f"{requirement} (pyproject.toml) is not pinned in {IMAGE_CONSTRAINTS_IN_REPO}"
        assert requirement.specifier.contains(image[name], prereleases=True), (
            f"{IMAGE_CONSTRAINTS_IN_REPO} pins {name}=={image[name]}, pyproject.toml asks {requirement}"
        )


def test_ray_version_agrees_across_constraints_and_manifests():
    ray = pins(IMAGE_CONSTRAINTS)["ray"]
    assert pins(CPU_CONSTRAINTS)["ray"] == ray
    for name, manifest in manifests().items():
        assert str(ray_cluster_spec(manifest)["rayVersion"]) == ray, (
            f"{name}: rayVersion {ray_cluster_spec(manifest)['rayVersion']}, the image has ray {ray}"
        )


def test_image_tags_agree():
    """One image everywhere, tagged with the project's version."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_rayservice", CLUSTER / "render_rayservice.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    images = {f"{name} {group}": c["image"] for name, m in manifests().items() for group, c in ray_containers(m)}
    images["aws.yaml"] = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["docker"]["image"]
    images["render_rayservice.py"] = render.IMAGE
    version = pyproject()["project"]["version"]
    assert set(images.values()) == {f"registry.example.com/avatar-forge:{version}"}, images
    for name, manifest in manifests().items():
        for _, params, _ in pod_templates(manifest):
            assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values are strings"
