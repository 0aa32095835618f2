"""HF transformers' MambaForCausalLM on scangraph's kernels (scangraph.integrations.transformers)
against transformers' own torch path, which is what runs on a CPU, or on a GPU without the
CUDA-only mamba_ssm package, or under torch.compile: a training step (the LM loss's forward and
backward) and greedy generate(). The model is built from a config (no download: random weights)
in the run's dtype; the projections and the causal conv are transformers' torch code in both, so
the difference is the selective scan (the parallel scan of a step, the state update of a
decoded token). transformers is an optional extra: without it this family has no cases."""
import functools

import torch

from scangraph.bench.case import Case, Options, our_backends, with_integration

OPS = ("hf_mamba", "hf_mamba_decode")
# Only on request (--ops): on a CPU, transformers' own training step at the default shape takes
# about 100 s a call (its backward runs through a Python loop over the sequence).
OPT_IN = True


def _shape(device: torch.device, options: Options) -> dict:
    if options.quick:
        return dict(hidden=32, layers=2, vocab=256, batch=1, length=64, prompt=8, new=4)
    if options.gpu(device):  # mamba-130m's configuration (state-spaces/mamba-130m-hf)
        return dict(hidden=768, layers=24, vocab=50280, batch=8, length=1024, prompt=64, new=64)
    return dict(hidden=256, layers=4, vocab=1024, batch=2, length=512, prompt=32, new=32)


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    wanted = [op for op in OPS if op in options.ops]
    if not wanted:
        return
    try:
        import transformers
    except ImportError:
        return
    from scangraph.integrations import transformers as sg_hf
    transformers.logging.set_verbosity_error()  # the slow-path notice on every model build
    s = _shape(device, options)
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], state_size=16,
                                      num_hidden_layers=s["layers"], expand=2, conv_kernel=4,
                                      pad_token_id=0, eos_token_id=0)
    model = transformers.MambaForCausalLM(config).to(device=device, dtype=dtype)
    # The weights a forward must read at least once: the compulsory bytes of a step (activations
    # come on top), so GB/s here is a floor of what the model moves, not a kernel's roofline.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    backends = our_backends("selective_scan", device, options)
    columns = {"layers": s["layers"], "hidden": s["hidden"], "batch": s["batch"]}

    if "hf_mamba" in wanted:
        ids = torch.randint(1, s["vocab"], (s["batch"], s["length"]), device=device)
        label = f"b{s['batch']} L{s['length']} d{s['hidden']} x{s['layers']}"

        def forward():
            model.eval()
            with torch.no_grad():
                return model(ids).logits

        def step():
            model.train()
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()

        case = Case(op="hf_mamba", label=label, dtype=dtype, device=device, bytes_fwd=weight_bytes,
                    columns={**columns, "L": s["length"]})
        for backend in backends:
            apply = functools.partial(sg_hf.apply, backend=backend)
            case.impls[f"scangraph.{backend}"] = {pass_name: with_integration(fn, apply, sg_hf.revert)
                                                  for pass_name, fn in (("fwd", forward), ("fwd+bwd", step))}
        case.impls["transformers"] = {"fwd": forward, "fwd+bwd": step}
        if options.only is None or options.only == label:
            yield case

    if "hf_mamba_decode" in wanted:
        prompt = torch.randint(1, s["vocab"], (s["batch"], s["prompt"]), device=device)
        label = f"b{s['batch']} prompt{s['prompt']} +{s['new']} d{s['hidden']} x{s['layers']}"

        def generate():
            model.eval()
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s["new"],
                                  min_new_tokens=s["new"], do_sample=False)

        # Greedy decoding, inference only ("fwd"): the prompt's forward, then one state update per
        # token, each reading every weight once.
        case = Case(op="hf_mamba_decode", label=label, dtype=dtype, device=device,
                    bytes_fwd=weight_bytes * (1 + s["new"]), columns={**columns, "L": s["prompt"] + s["new"]})
        for backend in backends:
            apply = functools.partial(sg_hf.apply, backend=backend)
            case.impls[f"scangraph.{backend}"] = {"fwd": with_integration(generate, apply, sg_hf.revert)}
        case.impls["transformers"] = {"fwd": generate}
        if options.only is None or options.only == label:
            yield case

