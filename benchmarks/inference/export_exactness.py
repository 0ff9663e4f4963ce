"""Max |logit difference| of export_task on a fine-tuned MiniLM (runs/main, switched to cls pooling)."""
import tempfile
import time

import torch
from transformers import AutoTokenizer

from hf_multitask import MultitaskModel, load_task_data
from hf_multitask.export import export_task, max_logit_difference

torch.set_num_threads(2)
model = MultitaskModel.from_pretrained("runs/main").eval()
model.config.pooling = "cls"
tok = AutoTokenizer.from_pretrained("runs/main")
limits = {"sst": None, "quora": 1000, "sts": None}
t0 = time.time()
for name, spec in model.specs.items():
    data = load_task_data(spec, "../shared/data", splits=("dev",))["dev"]
    if limits[name]:
        data = data.select(range(limits[name]))
    cols = [data[c] for c in spec.text_columns]
    inputs = cols[0] if len(cols) == 1 else list(zip(*cols))
    # CLS vectors once, then the exported head analytically for a sweep of s
    cls_vectors, ours = [], []
    with torch.no_grad():
        for i in range(0, len(inputs), 64):
            chunk = [list(c) for c in zip(*[x if isinstance(x, tuple) else (x,) for x in inputs[i:i+64]])]
            b = tok(*chunk, truncation=True, max_length=spec.max_length, padding=True, return_tensors="pt")
            h = model.encode(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            cls_vectors.append(h)
            ours.append(model.heads[name](h))
    h = torch.cat(cls_vectors)
    ours = torch.cat(ours)
    head = model.heads[name].out_proj
    print(f"{name}: n={len(inputs)} max|h_cls|={h.abs().max():.2f} mean|h_cls|={h.abs().mean():.3f} "
          f"max|logit|={ours.abs().max():.2f}")
    for s in (1e-1, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5):
        with torch.no_grad():
            theirs = torch.nn.functional.linear(torch.tanh(s * h), head.weight / s, head.bias)
            half = torch.nn.functional.linear(torch.tanh((s * h).half()).float(), head.weight / s, head.bias)
        print(f"  s={s:g}: fp32 max diff {(ours - theirs).abs().max():.2e}  (tanh input in fp16: "
              f"{(ours - half).abs().max():.2e})")
    with tempfile.TemporaryDirectory() as d:
        exported = export_task(model, name, d, tokenizer=tok)
        print(f"  end to end, s=1e-3: max diff {max_logit_difference(model, name, exported, inputs, tok):.2e}")
print(f"{time.time()-t0:.0f}s")
