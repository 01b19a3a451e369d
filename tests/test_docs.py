"""Every command shown in README.md and docs/ runs, in a cheap form: training commands as a dry run (options,
prompts and oracle checked, no model loaded) in a sandbox holding the files they name, bench and other
scripts through their own argument parsers, make targets and pip extras against the Makefile and
pyproject.toml. A renamed flag breaks this test, not a user."""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
# a span may break its line anywhere, right after the program's name too
INLINE = re.compile(r"(?<!`)`((?:\.venv/bin/)?(?:python3?|make|fastalign|torchrun|pip|nice|vllm|curl)\s[^`]*)`")
EXTERNAL = ("vllm", "curl")  # other projects' tools, shown in recipes: not ours to run here
SHELL = ("export", "kill", "until", "while", "done", "sleep", "cd", "mkdir", "rm")  # a recipe's plumbing
SERVED = ("--judge_url", "--reward_url")  # a dry run would ask the server: such commands are parsed only


def shown_commands() -> list[tuple[str, str]]:
    """(where, command) for every shell line of a fenced bash block and every inline command span."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.findall(text):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    found.append((doc.name, line))
        for span in INLINE.findall(text):
            found.append((doc.name, span.strip()))
    return found


COMMANDS = shown_commands()


def words(command: str) -> list[str]:
    """The command's words with wrappers dropped (nice, env assignments, .venv/bin/)."""
    argv = shlex.split(command.replace("…", ""))
    while argv and (argv[0] == "nice" or re.fullmatch(r"-n|-?\d+|[A-Z_]+=\S*", argv[0])):
        argv = argv[1:]
    if argv:
        argv[0] = argv[0].removeprefix(".venv/bin/")
    return argv


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO))
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sandbox(tmp_path, tiny_model_dir, monkeypatch):
    """The files the examples name: a model directory, a prompt file, a reward module."""
    (tmp_path / "path" / "to").mkdir(parents=True)
    (tmp_path / "path" / "to" / "model").symlink_to(tiny_model_dir)
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "Write line {i}."}}\n' for i in range(200)))
    (tmp_path / "my_rewards.py").write_text("def score(prompts, responses):\n    return [0.0 for _ in responses]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_train(argv: list[str], capsys) -> None:
    from fastalign.train import main

    if "--help" in argv:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0 and "--dry_run" in capsys.readouterr().out
        return
    code = main([*argv, "--dry_run"])
    err = capsys.readouterr().err
    assert code == 0, err


def check(argv: list[str], capsys) -> None:
    tool = argv[0]
    if tool in EXTERNAL or tool in SHELL:
        return
    if tool == "make":
        makefile = (REPO / "Makefile").read_text()
        target = next(a for a in argv[1:] if "=" not in a)
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target!r}"
        if target == "train":
            extra = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("ARGS=")), "")
            run_train(shlex.split(extra), capsys)
        return
    if tool == "pip":
        extras = re.findall(r"\[([\w,-]+)\]", " ".join(argv))
        pyproject = (REPO / "pyproject.toml").read_text()
        for extra in ",".join(extras).split(","):
            if extra:
                assert re.search(rf"^{re.escape(extra)} = \[", pyproject, re.M), f"no extra {extra!r}"
        return
    if tool == "torchrun":
        argv = ["python", *[a for a in argv[1:] if not a.startswith("--nproc") and not a.startswith("--master")]]
    if tool == "fastalign":
        argv = ["python", "-m", f"fastalign.{argv[1]}", *argv[2:]]
    assert argv[0] in ("python", "python3"), f"unknown command {argv[0]!r}: add it to tests/test_docs.py"
    if argv[1] == "-m":
        module, rest = argv[2], argv[3:]
        if module.split(".")[0] in EXTERNAL:
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
            return
        if module == "fastalign.train" and any(a.split("=")[0] in SERVED for a in rest):
            from fastalign.config import parse_args

            return parse_args([a.replace('"', "") for a in rest])
        if module == "fastalign.train":
            return run_train(rest, capsys)
        if module == "fastalign.extrapolate":
            from fastalign.extrapolate import parse_args

            return parse_args(rest)
        if module == "pytest":
            return
        raise AssertionError(f"unknown module {module!r}")
    script = REPO / argv[1]
    assert script.is_file(), f"no script {argv[1]}"
    load_script(script).parse_args(argv[2:])


def test_the_docs_show_commands():
    assert len(COMMANDS) > 10 and any("make train" in c for _, c in COMMANDS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_every_shown_command_runs_in_a_cheap_form(where, command, sandbox, capsys):
    if re.fullmatch(r"[A-Z_]+=\$\(.*\)", command.strip()):  # JUDGE=$(…): a recipe's variable
        return
    argv = words(command.rstrip("&").strip())
    if not argv:  # a shell assignment (SERVER=$!, JUDGE=$(…)): plumbing of a recipe
        assert re.fullmatch(r"[A-Z_]+=\S*", command.strip()), f"{where}: empty command {command!r}"
        return
    check(argv, capsys)


def test_the_configuration_page_names_every_option():
    import dataclasses

    from fastalign.config import RunConfig

    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(RunConfig) if f"`--{f.name}`" not in page]
    assert not missing, f"docs/configuration.md does not describe {missing}"
