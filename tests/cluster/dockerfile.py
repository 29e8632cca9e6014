"""A small Dockerfile reader for the image tests: instructions with their continuation lines
joined, stages, the environment each instruction sees (ARG and ENV), and the shell commands of
RUN split into argv lists, so the tests read the recipe as Docker would rather than search it."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Instruction:
    keyword: str  # FROM, RUN, ENV, ... in upper case
    args: str  # the rest, continuation lines joined
    env: dict[str, str]  # ARG and ENV values in effect for this instruction


@dataclass
class Stage:
    image: str  # the FROM image, build args substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Command:
    """One simple shell command of a RUN: ``VAR=value ... argv``."""

    assignments: dict[str, str]
    argv: list[str]


def _logical_lines(text: str) -> list[str]:
    """Instruction lines: comments and blank lines dropped, ``\\``-continued lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _substitute(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)


def _assignments(args: str, env: dict[str, str]) -> dict[str, str]:
    """``KEY=value ...`` (or the legacy ``KEY value``) of an ENV or ARG instruction."""
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: _substitute(" ".join(words[1:]), env)}
    return {k: _substitute(v, env) for k, _, v in (w.partition("=") for w in words)}


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions and the ARG/ENV they see."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=_substitute(words[0], global_args), name=name))
            env = {}
            continue
        if keyword == "ARG":
            values = {k: v for k, v in _assignments(args, env).items()}
            if not stages:
                global_args.update(values)
                continue
            env.update({k: v or global_args.get(k, "") for k, v in values.items()})
        elif keyword == "ENV":
            env.update(_assignments(args, env))
        if not stages:
            raise ValueError(f"Dockerfile: {keyword} before the first FROM")
        stages[-1].instructions.append(Instruction(keyword, args, dict(env)))
    return stages


def commands(run: Instruction) -> list[Command]:
    """The simple commands of a RUN (split at ``&&``, ``||``, ``;`` and ``|``), variables expanded."""
    lexer = shlex.shlex(run.args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    result, words = [], []
    for token in [*lexer, "&&"]:
        if token in ("&&", "||", ";", "|", "&"):
            assignments = {}
            while words and re.fullmatch(r"\w+=.*", words[0]):
                key, _, value = words.pop(0).partition("=")
                assignments[key] = _substitute(value, run.env)
            if words or assignments:
                result.append(Command(assignments, [_substitute(w, {**run.env, **assignments}) for w in words]))
            words = []
        else:
            words.append(token)
    return result


def pip_installs(stage: Stage) -> list[tuple[Instruction, Command, list[str]]]:
    """Every ``pip install`` of a stage: the RUN, the command, and the arguments after ``install``."""
    found = []
    for instruction in stage.instructions:
        if instruction.keyword != "RUN":
            continue
        for command in commands(instruction):
            argv = command.argv
            if argv[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                argv = ["pip", *argv[3:]]
            if argv and argv[0] in ("pip", "pip3") and "install" in argv:
                found.append((instruction, command, argv[argv.index("install") + 1 :]))
    return found


def apt_packages(stage: Stage) -> set[str]:
    """Packages that ``apt-get install`` (or ``apt install``) lines of a stage install."""
    packages = set()
    for instruction in stage.instructions:
        if instruction.keyword != "RUN":
            continue
        for command in commands(instruction):
            if command.argv[:1] in (["apt-get"], ["apt"]) and "install" in command.argv:
                args = command.argv[command.argv.index("install") + 1 :]
                packages |= {a.split("=")[0] for a in args if not a.startswith("-")}
    return packages
