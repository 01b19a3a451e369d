"""The CLI stops bad runs before any work (no model is loaded), with a message naming the problem."""
import hashlib
import json
import subprocess
import sys

import pytest

import fastalign.models
from fastalign.cli import main as cli_main
from fastalign.train import main as train_main


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(fastalign.models, "resolve_model_dir", refuse)


def run_train(argv, capsys) -> tuple[int, str]:
    code = train_main(argv)
    return code, capsys.readouterr().err


def test_empty_prompt_file(tmp_path, capsys, no_model_loading):
    path = tmp_path / "prompts.jsonl"
    path.write_text("")
    code, err = run_train(["--prompts", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "prompts.jsonl" in err and "empty" in err.lower()


def test_malformed_prompt_file(tmp_path, capsys, no_model_loading):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "broken\n')
    code, err = run_train(["--prompts", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "prompts.jsonl:2" in err


def test_too_few_prompts_to_hold_out(tmp_path, capsys, no_model_loading):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'{{"prompt": "write line {i}"}}\n' for i in range(10)))
    code, err = run_train(["--prompts", str(path), "--num_eval_prompts", "8"], capsys)
    assert code == 2 and "too few to hold out" in err


def test_bad_callable_oracle(tmp_path, capsys, no_model_loading):
    code, err = run_train(["--oracle", "callable", "--oracle_path", "no_such_module_xyz:score"], capsys)
    assert code == 2 and "no_such_module_xyz" in err


def test_unknown_loss_and_command(capsys):
    code, err = run_train(["--loss", "kto"], capsys)
    assert code == 2 and "unknown loss 'kto'" in err
    assert cli_main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_module_entry_point_exits_2_with_message():
    proc = subprocess.run([sys.executable, "-m", "fastalign.train", "--oracle", "judge"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--oracle judge needs --oracle_path" in proc.stderr


def test_resume_with_a_changed_config_is_refused(tmp_path, capsys, no_model_loading):
    from fastalign.config import RunConfig

    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-000004"
    ckpt.mkdir(parents=True)
    saved = RunConfig(output_dir=str(tmp_path / "out"), beta=0.1).to_dict()
    (ckpt / "run.json").write_text(json.dumps({"round": 4, "queries": 32, "world_size": 1, "config": saved}))
    files = {"run.json": [(ckpt / "run.json").stat().st_size, hashlib.sha256((ckpt / "run.json").read_bytes()).hexdigest()]}
    (ckpt / "manifest.json").write_text(json.dumps({"round": 4, "files": files}))
    argv = ["--output_dir", str(tmp_path / "out")]  # --resume auto is the default
    code, err = run_train(argv + ["--beta", "0.2", "--rounds", "50"], capsys)
    assert code == 2 and "cannot resume from" in err and "beta: 0.1 → 0.2" in err and "rounds" not in err.split(";")[0]
    assert "give a new --output_dir" in err
    code, err = run_train(argv + ["--resume", "no"], capsys)  # a fresh run over a resumable one
    assert code == 2 and "already holds checkpoints" in err and "--resume auto" in err
    (ckpt / "run.json").write_text("{}")  # damaged: nothing usable left to resume from
    code, err = run_train(argv, capsys)
    assert code == 2 and "no usable checkpoint" in err and "run.json has 2 bytes" in err


def test_skipped_and_dropped_prompts_are_counted(tmp_path):
    from fastalign.config import RunConfig
    from fastalign.train import split_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [f'{{"prompt": "write line {i}"}}' for i in range(12)] + ['{"prompt": ', '{"text": "x"}', '[1]']
    path.write_text("\n".join(rows) + "\n")
    cfg = RunConfig(prompts=str(path), num_eval_prompts=4, on_bad_prompt="skip")
    train, held = split_prompts(cfg)
    assert (len(train), len(held), len(train.skipped)) == (8, 4, 3)
    assert "prompts.jsonl:13: malformed JSON" in train.skipped[0] and "missing field 'prompt'" in train.skipped[1]
