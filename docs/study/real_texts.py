# 128 validation descriptions of the Debian English corpus, cut to the first 64 MiniLM tokens and
# detokenised as the sampler detokenises: the real-text anchor of docs/study.md
import json, random, sys
from transformers import AutoTokenizer
from elf_fast.data import load_text_dataset
from elf_fast.encoder import resolve_encoder_path
tok = AutoTokenizer.from_pretrained(resolve_encoder_path(None))
ds = load_text_dataset("data/debian/en", "validation")
rows = [ds[i]["text"] for i in random.Random(0).sample(range(len(ds)), 128)]
with open(sys.argv[1], "w") as f:
    for t in rows:
        ids = tok(t, add_special_tokens=False)["input_ids"][:64]
        f.write(json.dumps({"text": tok.decode(ids, skip_special_tokens=True)}) + "\n")
