"""Train the text classifier the tests ship in ``tests/data/fortunes/`` (``make train-text``).

Real text that installs offline: Debian's ``fortunes`` package (BSD licence, the quotations
``fortune`` prints), whose files sort quotations by topic. Four topics become four classes. A
WordPiece tokenizer is trained on the training texts with ``tokenizers``, a small BERT is trained
from scratch, and both are saved with ``save_pretrained``; 80 calibration texts (``calib/``, one
per line, no labels) and 400 labeled evaluation texts (``eval/eval.jsonl``) are written beside it.
Needs ``apt-get download fortunes`` (or an installed ``/usr/share/games/fortunes``). Seeds are
fixed; the script prints its final accuracy.

    python tests/train_text.py [FORTUNES_DIR]
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TOPICS = ("computers", "politics", "science", "songs-poems")
OUT = Path(__file__).parent / "data" / "fortunes"
MAX_LENGTH = 64
EVAL_PER_TOPIC, CALIB = 100, 80


def fortunes_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    installed = Path("/usr/share/games/fortunes")
    if installed.is_dir():
        return installed
    tmp = Path(tempfile.mkdtemp(prefix="fortunes-"))
    subprocess.run(["apt-get", "download", "fortunes"], cwd=tmp, check=True)
    deb = next(tmp.glob("fortunes_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(tmp / "x")], check=True)
    return tmp / "x" / "usr" / "share" / "games" / "fortunes"


def quotations(path: Path) -> list[str]:
    """The file's quotations (separated by lines of '%'), each on one line."""
    entries = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    out = []
    for entry in entries:
        text = " ".join(line.strip() for line in entry.splitlines() if line.strip())
        if 20 <= len(text) <= 600:
            out.append(text)
    return out


def main() -> None:
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    torch.manual_seed(0)
    torch.set_num_threads(2)
    source = fortunes_dir()
    rng = random.Random(0)
    train, evaluation = [], []
    for label, topic in enumerate(TOPICS):
        texts = quotations(source / topic)
        rng.shuffle(texts)
        evaluation += [(t, label) for t in texts[:EVAL_PER_TOPIC]]
        train += [(t, label) for t in texts[EVAL_PER_TOPIC:]]
    rng.shuffle(train)

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([t for t, _ in train], trainers.WordPieceTrainer(vocab_size=3000, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH)
    config = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=192, max_position_embeddings=MAX_LENGTH, num_labels=len(TOPICS),
        id2label=dict(enumerate(TOPICS)), label2id={t: i for i, t in enumerate(TOPICS)},
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)

    def encode(batch: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        enc = fast([t for t, _ in batch], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        return {**enc, "labels": torch.tensor([y for _, y in batch])}

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    epochs, batch = 12, 32
    steps = epochs * ((len(train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        rng.shuffle(train)
        for i in range(0, len(train), batch):
            loss = model(**encode(train[i : i + batch])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            enc = encode(evaluation)
            labels = enc.pop("labels")
            accuracy = float((model(**enc).logits.argmax(1) == labels).float().mean())
        print(f"epoch {epoch + 1}: loss {float(loss):.3f}, evaluation accuracy {accuracy:.1%}")

    (OUT / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT / "model")
    fast.save_pretrained(OUT / "model")
    (OUT / "calib").mkdir(exist_ok=True)
    (OUT / "calib" / "texts.txt").write_text("\n".join(t for t, _ in train[:CALIB]) + "\n", encoding="utf-8")
    (OUT / "eval").mkdir(exist_ok=True)
    with open(OUT / "eval" / "eval.jsonl", "w", encoding="utf-8") as f:
        for text, label in evaluation:
            f.write(json.dumps({"text": text, "label": TOPICS[label]}) + "\n")
    print(f"final evaluation accuracy {accuracy:.1%} on {len(evaluation)} texts; wrote {OUT}")


if __name__ == "__main__":
    main()
