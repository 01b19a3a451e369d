"""A vLLM engine starts and closes after another engine's process group was torn down underneath it.

Runs in a child process: the scenario leaves an engine open over a destroyed process group, which is
exactly the state that must not leak into the rest of the suite.
"""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, torch
    from fastalign.engine.vllm_engine import VLLMEngine
    first = VLLMEngine(sys.argv[1], dtype="fp32", kv_cache_gib=0.1, max_model_len=128)
    torch.distributed.destroy_process_group()  # e.g. a learner's shutdown while `first` is still open
    second = VLLMEngine(sys.argv[1], dtype="fp32", kv_cache_gib=0.1, max_model_len=128)
    print("tokens", len(second.greedy([[1, 2, 3]], 4)[0].token_ids))
    second.close()
""")


@pytest.mark.timeout(600)
def test_engine_after_a_torn_down_process_group(tiny_model_dir):
    pytest.importorskip("vllm")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True,
                          timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens 4" in proc.stdout
