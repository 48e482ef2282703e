"""Load a model folder in vLLM (CPU build here) and report tokenization, config and greedy
outputs as JSON on stdout (last line). usage: vllm_check.py MODEL MAX_LEN PROMPTS.json"""
import json
import sys

if __name__ == "__main__":
    from harness.evaluation.vllm_engine import make_engine

    model, max_len, prompts_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    prompts = json.load(open(prompts_file))
    llm = make_engine(model, max_model_len=max_len)
    from vllm import SamplingParams
    tok = llm.get_tokenizer()
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts["texts"]]
    outs = llm.generate([{"prompt_token_ids": x} for x in ids],
                        SamplingParams(temperature=0.0, max_tokens=prompts.get("max_tokens", 8)))
    hf_cfg = llm.llm_engine.model_config.hf_config
    result = {
        "ids": ids,
        "generated": [list(o.outputs[0].token_ids) for o in outs],
        "max_model_len": llm.llm_engine.model_config.max_model_len,
        "rope_parameters": dict(getattr(hf_cfg, "rope_parameters", None) or {}),
        "max_position_embeddings": hf_cfg.max_position_embeddings,
        "engine_core": type(llm.llm_engine.engine_core).__name__,
    }
    if prompts.get("again"):
        # the harness's backend, twice more in this process after this engine is stopped:
        # what an evaluation of several checkpoints in one comparison does
        from harness.evaluation.backends import VLLMGreedy

        import os
        import random

        import numpy as np
        import torch

        def draws():
            return [random.random(), np.random.rand(), torch.rand(1).item()]

        llm.llm_engine.engine_core.shutdown()
        del llm
        result["again"], result["closed"] = [], []
        env, set_threads = dict(os.environ), torch.set_num_threads
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        for _ in range(2):
            backend = VLLMGreedy(model, max_len, stop_ids=[])
            n = prompts.get("max_tokens", 8)
            result["again"].append(backend.generate(ids, [n] * len(ids)))
            backend.close()
            result["closed"].append(backend.llm is None)
        # what the engines changed in this process was put back
        after = draws()
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        result["rng_kept"] = after == draws()
        result["env_kept"] = dict(os.environ) == env
        result["threads_kept"] = torch.set_num_threads is set_threads
    print("RESULT " + json.dumps(result), flush=True)
