"""How strong SMART's R_s is under four ways of perturbing the embeddings, on the bundled all-MiniLM-L6-v2.

For fixed SST and STS batches of real sentences, each variant finds ν (K = 1 ascent step) and reports the per-token
‖ν‖_∞, the mean |x| of the tensor ν is added to, and R_s = l_s(f(x + ν), f(x)). Dropout is off (eval mode), so R_s is 0
at ν = 0 and the differences come from ν alone. The heads are random (seed 0): compare the variants with each other,
not with a trained model.

    ours        ν_0 ~ N(0, σ²), σ = 1e-5; ν ← ν + η g / (‖g‖_∞ + ε), η = 1e-3; on the word embeddings (the defaults)
    old_var     as ours with σ = √1e-5 (smart_noise_var = 1e-5 read as a variance, before the fix)
    paper       as ours, then ν projected onto ‖ν‖_∞ ≤ 1e-5 (the paper's ε as the radius)
    mtdnn       MT-DNN's SmartPerturbation: ν added to the embedding output after its LayerNorm, ν_0 ~ N(0, 1e-5²),
                ν ← (ν + η g) / (‖ν + η g‖_∞ + 1e-6) with η = 1e-5 (its train.py default): renormalised

    HF_HUB_OFFLINE=1 python benchmarks/smart_strength.py --threads 2 --output smart_strength.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import torch

from hf_multitask import MultitaskModel, load_task_data, resolve_encoder_path, sst_task, sts_task, tokenize_task
from hf_multitask.regularizers.smart import SmartRegularizer, embedding_forward, smart_divergence

VARIANTS = {
    "ours": dict(noise_std=1e-5),
    "old_var": dict(noise_std=1e-5**0.5),
    "paper": dict(noise_std=1e-5, radius=1e-5),
}


def batches(data_dir: str, size: int, tokenizer, trainer_collate):
    """`{task: batch}`: the first `size` training rows of SST and STS."""
    out = {}
    with tempfile.TemporaryDirectory() as head_dir:
        for spec in (sst_task(), sts_task()):
            with open(os.path.join(data_dir, f"{spec.name}-train.tsv"), encoding="utf-8") as f:
                head = [next(f) for _ in range(size + 1)]
            with open(os.path.join(head_dir, f"{spec.name}-train.tsv"), "w", encoding="utf-8") as f:
                f.writelines(head)
            rows = tokenize_task(load_task_data(spec, head_dir, splits=("train",))["train"], spec, tokenizer)
            out[spec.name] = trainer_collate([dict(row) | {"task_name": spec.name} for row in rows])
    return out


def ours(model, batch, kind, options):
    """(‖ν‖_∞ per token, mean |x|, R_s) for SMART as implemented here, with `options`."""
    smart = SmartRegularizer([batch["task_name"]], **options)
    clean = model(**batch).logits
    embeds, forward = embedding_forward(model, batch)
    noises = smart.adversarial_noise(forward, embeds, clean, kind)
    with torch.no_grad():
        r_s = smart_divergence(kind, forward(noises, True), clean)
    return noises[0].abs().amax(-1).mean().item(), embeds[0].abs().mean().item(), r_s.item()


def mtdnn(model, batch, kind, step_size=1e-5, noise_std=1e-5, epsilon=1e-6):
    """The same for MT-DNN's SmartPerturbation (K = 1), ν added after the embeddings' LayerNorm by a forward hook."""
    holder = {}
    hook = model.encoder.embeddings.register_forward_hook(lambda module, inputs, output: output + holder["nu"])
    try:
        holder["nu"] = torch.zeros(())
        with torch.no_grad():
            clean = model(**batch).logits
            embedded = model.encoder.embeddings(input_ids=batch["input_ids"],
                                                token_type_ids=batch.get("token_type_ids"))
        noise = (torch.randn(embedded.shape) * noise_std).requires_grad_()
        holder["nu"] = noise
        (grad,) = torch.autograd.grad(smart_divergence(kind, model(**batch).logits, clean, "sum"), noise)
        moved = noise.detach() + step_size * grad
        holder["nu"] = moved / (moved.abs().amax(-1, keepdim=True) + epsilon)
        with torch.no_grad():
            r_s = smart_divergence(kind, model(**batch).logits, clean)
    finally:
        hook.remove()
    return holder["nu"].abs().amax(-1).mean().item(), embedded.abs().mean().item(), r_s.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("HF_MULTITASK_DATA", "/work/shared/data"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--draws", type=int, default=5, help="noise draws per variant and task, averaged")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from hf_multitask import MultitaskCollator

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    torch.manual_seed(0)
    model = MultitaskModel.from_encoder("minilm", tasks=[sst_task(), sts_task()]).eval()
    data = batches(args.data_dir, args.batch_size, tokenizer, MultitaskCollator(tokenizer))
    results = {}
    for variant in [*VARIANTS, "mtdnn"]:
        for task, batch in data.items():
            kind = model.specs[task].task_kind
            torch.manual_seed(1)
            draws = [mtdnn(model, batch, kind) if variant == "mtdnn" else ours(model, batch, kind, VARIANTS[variant])
                     for _ in range(args.draws)]
            nu, x, r_s = (sum(values) / len(values) for values in zip(*draws))
            results[f"{variant}/{task}"] = {"nu_inf_per_token": nu, "mean_abs_x": x, "ratio": nu / x, "r_s": r_s}
            print(f"{variant:8s} {task}: ‖ν‖_∞ {nu:.3g}  mean|x| {x:.3g}  ratio {nu / x:.3g}  R_s {r_s:.3g}")
    if args.output:
        info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                "batch_size": args.batch_size, "draws": args.draws}
        with open(args.output, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
