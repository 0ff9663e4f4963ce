"""SST-5 dev accuracy of runs/main on: the stored PTB text, a detokenised (raw-looking) version, and
normalize_ptb of the detokenised version."""
import re
import time

import numpy as np
from transformers import AutoTokenizer

from hf_multitask import MultitaskModel, load_task_data, normalize_ptb, sst_task
from hf_multitask.inference import predict_logits


def detokenize(s):  # reverse of the PTB conventions of the SST files (measurement only)
    s = s.strip()
    s = s.replace("-LRB- ", "(").replace(" -RRB-", ")").replace("\\/", "/").replace("\\*", "*")
    s = re.sub(r"`` (.*?) ''", r'"\1"', s)
    s = re.sub(r"` (.*?) '", r"'\1'", s)
    s = s.replace("ca n't", "can't").replace("wo n't", "won't").replace("ai n't", "ain't").replace("can not", "cannot")
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r"(\w) ' ", r"\1' ", s)
    s = re.sub(r" ([.,;:!?%]+)", r"\1", s).replace("$ ", "$").replace(" ...", "...").replace(" -- ", "--")
    return s

model = MultitaskModel.from_pretrained("runs/main").eval()
tok = AutoTokenizer.from_pretrained("runs/main")
dev = load_task_data(sst_task(), "../shared/data", splits=("dev",))["dev"]
stored = [s.strip() for s in dev["sentence"]]
raw = [detokenize(s) for s in stored]
gold = np.array(dev["labels"])
print("examples:", raw[:3])
same = sum(normalize_ptb(r) == s for r, s in zip(raw, stored))
print("normalize_ptb(detokenize(s)) == s for", same, "of", len(stored))
print("raw differs from stored for", sum(r != s for r, s in zip(raw, stored)))
t = time.time()
for name, texts, norm in [("stored PTB", stored, None), ("detokenised", raw, None), ("detokenised + ptb", raw, "ptb")]:
    acc = (predict_logits(model, "sst", texts, tok, batch_size=64, normalize=norm).argmax(-1) == gold).mean()
    print(f"{name}: accuracy {acc:.4f}")
print(f"{time.time()-t:.0f}s")
