"""vLLM's compiled mode (`--engine_compile`): the compiled graphs must read the weights swapped in after
start-up, not constants captured at compile time. Runs in a child process so the compile's threads and
caches stay out of the suite's process."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from fastalign.engine.vllm_engine import VLLMEngine
    sys.path.insert(0, sys.argv[2])
    from conftest import hf_greedy, perturbed
    engine = VLLMEngine(sys.argv[1], dtype="fp32", kv_cache_gib=0.05, max_model_len=128, threads=1,
                        enforce_eager=False)
    prompts = [[1, 5, 9, 14], [3, 3, 7]]
    for seed in (1, 2):
        model = perturbed(sys.argv[1], seed)
        engine.update_weights(model.named_parameters())
        got = [c.token_ids for c in engine.greedy(prompts, 12)]
        print("seed", seed, "equal", got == hf_greedy(model, prompts, 12))
    engine.close()
""")


@pytest.mark.timeout(900)
def test_compiled_engine_follows_swapped_weights(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=860,
                          env={**os.environ, "VLLM_CACHE_ROOT": str(tmp_path)})  # compiled afresh, not from a cache
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seed 1 equal True" in proc.stdout and "seed 2 equal True" in proc.stdout, proc.stdout
