"""Text conditioning through a frozen T5 / Flan-T5 encoder (transformers' T5EncoderModel).

`T5Conditioner(source)` loads the encoder and its tokenizer from a local save_pretrained folder or a
hub id (alm.hub: offline-friendly, clear errors) and maps a batch of texts to

    states (B, L, D) float32    the encoder's last hidden states (D = d_model: 768 for t5-base)
    mask   (B, L) long          1 = a real token (the tokenizer's attention mask, right padding)

as MusicGen's T5Conditioner does (audiocraft; transformers' MusicgenForConditionalGeneration runs
the same encoder on the processor's padded ids). The encoder is frozen: every parameter has
requires_grad=False, it is kept in eval mode (no dropout) and runs under no_grad, and it is a plain
attribute of a plain object, so it never enters an LM's parameters or optimizer.

`make_tiny_t5(dir, texts)`: a tiny random T5 encoder with a sentencepiece tokenizer trained on
`texts`, written with save_pretrained — the tiny recipes' and the tests' stand-in for t5-base
(nothing is downloaded).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch

DEFAULT_MAX_LENGTH = 256  # alm's cap on caption tokens (T5's tokenizers default to 512)
TEXT_ENCODER_DIR = "text_encoder"  # where an export keeps its frozen T5 (save_pretrained layout)


class T5Conditioner:
    def __init__(self, source: str | os.PathLike, device: str | torch.device = "cpu",
                 max_length: int = DEFAULT_MAX_LENGTH, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, T5EncoderModel

        from alm import hub

        self.source = str(source)
        self.max_length = int(max_length)
        self.tokenizer = hub.from_pretrained(AutoTokenizer, source, what="T5 text encoder (tokenizer)")
        encoder = hub.from_pretrained(T5EncoderModel, source, what="T5 text encoder")
        self.encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: str | torch.device) -> "T5Conditioner":
        self.encoder.to(device)
        return self

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids (B, L), mask (B, L)), padded to the longest, truncated to max_length."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError(f"T5Conditioner: expected a non-empty list of texts, got {texts!r}")
        t = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                           return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> states (B, L, D) float32, zero at padding."""
        self.encoder.eval()  # frozen: never dropout, whatever mode a caller left it in
        dev = self.device
        states = self.encoder(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        return states.float() * mask.to(dev)[..., None]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (states (B, L, D) float32, mask (B, L) long), on the encoder's device."""
        ids, mask = self.tokenize(texts)
        return self.encode_ids(ids, mask), mask.to(self.device)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """The encoder + tokenizer as a save_pretrained folder (what an export carries)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out


def make_tiny_t5(out_dir: str | os.PathLike, texts: Iterable[str], d_model: int = 32, num_layers: int = 2,
                 num_heads: int = 2, d_ff: int = 64, vocab_size: int = 200, seed: int = 0) -> Path:
    """A tiny random T5 encoder + a sentencepiece (unigram) tokenizer trained on `texts`, written
    with save_pretrained into out_dir (config.json, model.safetensors, tokenizer files)."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("make_tiny_t5: no texts to train its sentencepiece tokenizer on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "spm")
        # T5's special layout: <pad>=0, </s>=1, <unk>=2, no BOS
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
            minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        vocab = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
                      num_layers=num_layers, num_heads=num_heads, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, dropout_rate=0.1)
    T5EncoderModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
