"""ExPO: θ_sft + α(θ_aligned − θ_sft), written as a loadable HF model, through `fastalign extrapolate`."""
import pytest
import torch

from fastalign.cli import main as cli_main
from fastalign.extrapolate import extrapolate_weights
from fastalign.models import build_tiny_model, load_causal_lm


@pytest.fixture(scope="module")
def aligned_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every parameter moved by a known amount (+0.01·k for the k-th parameter)."""
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.add_(0.01 * (k + 1))
    out = tmp_path_factory.mktemp("aligned")
    model.save_pretrained(out)
    return out


def test_weight_arithmetic_by_hand():
    sft = [("w", torch.tensor([1.0, 2.0])), ("b", torch.tensor([0.0]))]
    aligned = [("w", torch.tensor([2.0, 1.0])), ("b", torch.tensor([0.5]))]
    out = dict(extrapolate_weights(sft, aligned, alpha=1.5))
    assert out["w"].tolist() == [2.5, 0.5] and out["b"].tolist() == [0.75]
    assert dict(extrapolate_weights(sft, aligned, 0.0))["w"].tolist() == [1.0, 2.0]
    bf = dict(extrapolate_weights([("w", torch.tensor([1.0]))], [("w", torch.tensor([2.0], dtype=torch.bfloat16))], 2))
    assert bf["w"].dtype == torch.bfloat16 and bf["w"].item() == 3.0


def test_mismatched_models_are_refused():
    with pytest.raises(ValueError, match="shape"):
        list(extrapolate_weights([("w", torch.zeros(2))], [("w", torch.zeros(3))], 1.5))
    with pytest.raises(ValueError, match="lacks"):
        list(extrapolate_weights([("w", torch.zeros(2))], [("v", torch.zeros(2))], 1.5))
    with pytest.raises(ValueError, match="aligned model lacks: v"):
        list(extrapolate_weights([("w", torch.zeros(2)), ("v", torch.zeros(2))], [("w", torch.zeros(2))], 1.5))
    with pytest.raises(ValueError, match="finite"):
        list(extrapolate_weights([], [], float("nan")))


def test_cli_writes_the_extrapolated_model(tiny_model_dir, aligned_dir, tmp_path, capsys):
    out = tmp_path / "expo"
    code = cli_main(["extrapolate", "--sft", str(tiny_model_dir), "--aligned", str(aligned_dir),
                     "--alpha", "2.5", "--out", str(out)])
    assert code == 0 and "alpha 2.5" in capsys.readouterr().out
    got = load_causal_lm(out)
    for (name, p), (_, s), (_, a) in zip(got.named_parameters(), load_causal_lm(tiny_model_dir).named_parameters(),
                                        load_causal_lm(aligned_dir).named_parameters()):
        torch.testing.assert_close(p, s + 2.5 * (a - s), rtol=0, atol=1e-6, msg=name)
    assert (out / "tokenizer_config.json").is_file()  # the tokenizer came with it (from --aligned or --sft)


def test_cli_refuses_another_architecture(tiny_model_dir, tmp_path, capsys):
    other = build_tiny_model(tmp_path / "wide", hidden_size=96)
    code = cli_main(["extrapolate", "--sft", str(tiny_model_dir), "--aligned", str(other), "--alpha", "1.5",
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "shape" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_accepts_a_lora_adapter(tiny_model_dir, tmp_path, capsys):
    """A LoRA run's final/ is an adapter: the aligned model is the SFT model with it merged in, so ExPO gives
    W + α·ΔW on the adapted weights and leaves every other weight as it was."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(tiny_model_dir), LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    model.save_pretrained(tmp_path / "adapter")
    delta = {f"{n.removeprefix('base_model.model.').removesuffix('.base_layer')}.weight": m.get_delta_weight("default")
             for n, m in model.named_modules() if hasattr(m, "get_delta_weight") and n.endswith("o_proj")}
    code = cli_main(["extrapolate", "--sft", str(tiny_model_dir), "--aligned", str(tmp_path / "adapter"),
                     "--alpha", "1.5", "--out", str(tmp_path / "expo")])
    assert code == 0, capsys.readouterr().err
    sft = dict(load_causal_lm(tiny_model_dir).named_parameters())
    got = dict(load_causal_lm(tmp_path / "expo").named_parameters())
    assert len(delta) == 2 and got.keys() == sft.keys()
    for name, p in got.items():
        want = sft[name] + 1.5 * delta[name] if name in delta else sft[name]
        torch.testing.assert_close(p, want, rtol=0, atol=1e-6, msg=name)
    other = build_tiny_model(tmp_path / "wide", hidden_size=96)
    assert cli_main(["extrapolate", "--sft", str(other), "--aligned", str(tmp_path / "adapter"), "--alpha", "1.5",
                     "--out", str(tmp_path / "x")]) == 2
    assert "does not fit the --sft model" in capsys.readouterr().err
