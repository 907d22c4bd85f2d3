"""alm's MusicGen LM against transformers' MusicgenForConditionalGeneration, on a tiny random model
built here (T5 width != decoder width, so enc_to_dec_proj is used; a sentencepiece tokenizer
trained here; the source folder's own processor tokenizes prompts of different lengths, padded in
one batch): logits within 1e-4, greedy generation with guidance gives the same codes, and the
round trip convert -> alm export -> transformers folder -> same logits."""

import io
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from alm.convert_musicgen import lm_from_transformers  # noqa: E402
from alm.models.codebook_patterns import make_pattern  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

K, CARD, T5_DIM, DIM = 4, 16, 24, 32
PROMPTS = ["happy rock song with loud guitars and heavy drums", "calm piano", "jazz"]
TOL = 1e-4


def make_source(path, melody: bool = False, card: int = CARD, positions: int = 64):
    """A tiny random transformers MusicGen (or MusicGen-Melody) + processor, save_pretrained into `path`."""
    import math

    import sentencepiece as spm
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenProcessor, T5Config, T5Tokenizer)

    texts = PROMPTS + ["an 80s pop track with bassy drums and synth", "ambient pads, slow and wide"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 20), model_writer=model, vocab_size=48,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    (path / "spm").mkdir(parents=True)
    (path / "spm" / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(path / "spm"), extra_ids=0)
    t5 = T5Config(vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=6, d_ff=48, num_layers=2, num_heads=4,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    codec = EncodecConfig(sampling_rate=16000, audio_channels=1, num_filters=4, upsampling_ratios=[8, 8, 5],
                          codebook_size=card, codebook_dim=8, hidden_size=8,
                          target_bandwidths=[K * 50 * math.log2(card) / 1000],  # K codebooks at 50 Hz
                          num_residual_layers=1, chunk_length_s=None)
    assert codec.num_quantizers == K
    dec = dict(vocab_size=card, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
               num_codebooks=K, pad_token_id=card, bos_token_id=card, decoder_start_token_id=card,
               max_position_embeddings=positions, dropout=0.1)
    torch.manual_seed(0)
    if melody:
        from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig, MusicgenMelodyForConditionalGeneration

        config = MusicgenMelodyConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(),
                                      decoder=MusicgenMelodyDecoderConfig(**dec).to_dict(), chroma_length=20)
        hf = MusicgenMelodyForConditionalGeneration(config).eval()
        processor = tokenizer  # its processor's chroma extractor needs torchaudio: the tokenizer alone
    else:
        config = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(),
                                decoder=MusicgenDecoderConfig(**dec).to_dict())
        hf = MusicgenForConditionalGeneration(config).eval()
        processor = MusicgenProcessor(EncodecFeatureExtractor(feature_size=1, sampling_rate=16000), tokenizer)
    with torch.no_grad():  # a random init barely reads its condition: make the text (and melody) matter
        hf.enc_to_dec_proj.weight.mul_(20)
        if melody:
            hf.audio_enc_to_dec_proj.weight.mul_(20)
        for layer in hf.decoder.model.decoder.layers:
            if hasattr(layer, "encoder_attn"):
                layer.encoder_attn.out_proj.weight.mul_(30)
            else:  # melody: the condition is read through self-attention over the prefix
                layer.self_attn.out_proj.weight.mul_(30)
    hf.save_pretrained(path / "src")
    processor.save_pretrained(path / "src")
    return path / "src"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("musicgen"))


def load(src):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(src).eval(), AutoProcessor.from_pretrained(src)


def step_codes(B: int, S: int, seed: int = 0) -> torch.Tensor:
    """Codes in the delay layout (special cells included) of random frames."""
    g = torch.Generator().manual_seed(seed)
    pat = make_pattern("delay", K, S - K)
    return pat.build(torch.randint(0, CARD, (B, K, S - K), generator=g), CARD)


def hf_logits(hf, inputs, codes):
    B, _, S = codes.shape
    with torch.no_grad():
        out = hf(**inputs, decoder_input_ids=codes.reshape(B * K, S)).logits
    return out.reshape(B, K, S, CARD)


def alm_logits(lm, hf, inputs, codes):
    with torch.no_grad():
        cond = hf.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return lm(codes, cond, inputs["attention_mask"])


def test_logits_equal_transformers(source):
    hf, processor = load(source)
    lm = lm_from_transformers(hf)
    assert lm.cfg.cond_proj and lm.cfg.cond_dim == T5_DIM and lm.cfg.dim == DIM
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].sum(1).unique().numel() == 3  # three lengths, padded in one batch
    codes = step_codes(3, 12)
    ref, ours = hf_logits(hf, inputs, codes), alm_logits(lm, hf, inputs, codes)
    diff = (ref - ours).abs().max().item()
    print(f"max |alm - transformers| logits = {diff:.2e}")
    assert diff < TOL
    assert (ref[0] - ref[1]).abs().max() > 1e-2  # the text changes the logits: conditioning is compared too


def captured_codes(hf, **kwargs) -> torch.Tensor:
    """transformers' generate returns audio: the codes are what it hands to audio_encoder.decode."""
    seen = []
    decode = hf.audio_encoder.decode

    def record(audio_codes, *args, **kw):
        seen.append(audio_codes.clone())
        return decode(audio_codes, *args, **kw)

    hf.audio_encoder.decode = record
    try:
        with torch.no_grad():
            hf.generate(**kwargs)
    finally:
        hf.audio_encoder.decode = decode
    return seen[0][0]  # (1, B, K, T) -> (B, K, T)


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_greedy_generation_with_guidance_equals_transformers(source, scale):
    hf, processor = load(source)
    lm = lm_from_transformers(hf)
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    new = 14
    ref = captured_codes(hf, **inputs, do_sample=False, guidance_scale=scale, max_new_tokens=new)
    frames = 1 + new - K  # max_length = 1 + new steps, of which K are the delay's empty cells
    assert ref.shape == (3, K, frames)
    pat = make_pattern("delay", K, frames)
    with torch.no_grad():
        cond = hf.text_encoder(**inputs).last_hidden_state
    seq = lm.generate(pat.valid, cond, inputs["attention_mask"], cfg_scale=scale, temperature=0.0)
    ours = pat.revert(seq)
    print(f"greedy codes, cfg {scale}: {(ours == ref).float().mean().item():.3f} equal over {ref.numel()}")
    assert torch.equal(ours, ref)
    assert not torch.equal(ours[0], ours[1])  # different prompts, different music


def test_convert_export_transformers_round_trip(source, tmp_path):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration, T5EncoderModel

    from alm.config import from_yaml_text
    from alm.convert_musicgen import convert
    from alm.export import load_pretrained, write_export
    from alm.tokenizers.codec import load_codec

    hf, processor = load(source)
    exp = convert(str(source), tmp_path / "exp")
    meta = json.loads((exp / "export.json").read_text())
    assert meta["stage"] == "musicgen" and meta["converted_from"] == "musicgen"
    lm = load_pretrained(exp)
    # everything travels in the export: T5 + tokenizer, codec + feature extractor
    t5 = T5EncoderModel.from_pretrained(exp / "text_encoder").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exp / "text_encoder")
    assert load_codec(exp / "codec").config.codebook_size == CARD
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(tokenizer(PROMPTS, padding=True, return_tensors="pt")["input_ids"], inputs["input_ids"])
    codes = step_codes(3, 10, seed=1)
    ref = hf_logits(hf, inputs, codes)
    with torch.no_grad():
        cond = t5(**inputs).last_hidden_state
        assert (lm(codes, cond, inputs["attention_mask"]) - ref).abs().max() < TOL
    cfg = from_yaml_text((exp / "config.yaml").read_text(), "config.yaml")
    out = write_export(lm, cfg, tmp_path / "hf", fmt="transformers")
    back = MusicgenForConditionalGeneration.from_pretrained(out).eval()
    assert (hf_logits(back, inputs, codes) - ref).abs().max() < TOL
    assert torch.equal(AutoProcessor.from_pretrained(out)(text=PROMPTS, padding=True, return_tensors="pt")["input_ids"],
                       inputs["input_ids"])

    # LoRA: adapters on the converted weights; the transformers export is the merged model (base + delta)
    import dataclasses

    from alm.models.musicgen import MusicGenLM

    cfg.model = dataclasses.replace(cfg.model, lora_rank=2, lora_targets="self_attn.q,cross_attn.v,ffn.fc")
    lora = MusicGenLM(cfg.model)
    lora.load_state_dict(lm.state_dict(), strict=False)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
        adapted = lora.eval()(codes, cond, inputs["attention_mask"])
    assert (adapted - ref).abs().max() > 1e-2
    merged = write_export(lora, cfg, tmp_path / "hf-lora", fmt="transformers")
    back = MusicgenForConditionalGeneration.from_pretrained(merged).eval()
    assert (hf_logits(back, inputs, codes) - adapted).abs().max() < TOL


def test_convert_refuses_what_is_not_musicgen(tmp_path):
    from alm.convert_musicgen import convert
    from alm.errors import UserError

    (tmp_path / "t5").mkdir()
    transformers.T5Config(d_model=8, d_ff=8, num_layers=1, num_heads=1, d_kv=8).save_pretrained(tmp_path / "t5")
    with pytest.raises(UserError, match="is not a MusicGen"):
        convert(str(tmp_path / "t5"), tmp_path / "out")
    with pytest.raises(UserError, match="no such local path"):
        convert(str(tmp_path / "missing dir"), tmp_path / "out")


def test_melody_logits_and_greedy_guidance_equal_transformers(tmp_path):
    """MusicGen-Melody: [chroma | text | codes] as one causal prefix; null = zero text + bin-0 chroma."""
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    src = make_source(tmp_path, melody=True)
    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(src).eval()
    lm = lm_from_transformers(hf)
    assert lm.cfg.cond_mode == "prefix" and lm.cfg.melody_dim == 12 and lm.cfg.melody_len == 20
    inputs = AutoTokenizer.from_pretrained(src)(PROMPTS, padding=True, return_tensors="pt")
    chroma = torch.nn.functional.one_hot(torch.randint(0, 12, (3, 7), generator=torch.Generator().manual_seed(0)),
                                         12).float()  # 7 frames, repeated to chroma_length 20
    codes = step_codes(3, 12)
    with torch.no_grad():
        ref = hf(**inputs, input_features=chroma, decoder_input_ids=codes.reshape(3 * K, 12)).logits
        ref = ref.reshape(3, K, -1, CARD)[:, :, -12:]  # transformers returns the prefix positions too
        null_ref = hf(**inputs, decoder_input_ids=codes.reshape(3 * K, 12)).logits.reshape(3, K, -1, CARD)[:, :, -12:]
        cond = hf.text_encoder(**inputs).last_hidden_state
        diff = (lm(codes, cond, inputs["attention_mask"], melody=chroma) - ref).abs().max().item()
        null_diff = (lm(codes, cond, inputs["attention_mask"]) - null_ref).abs().max().item()
    print(f"melody: max |alm - transformers| logits = {diff:.2e} (null chroma {null_diff:.2e})")
    assert diff < TOL and null_diff < TOL
    assert (ref - null_ref).abs().max() > 1e-2  # the melody changes the logits
    new = 14
    want = captured_codes(hf, **inputs, input_features=chroma, do_sample=False, guidance_scale=3.0, max_new_tokens=new)
    pat = make_pattern("delay", K, 1 + new - K)
    got = pat.revert(lm.generate(pat.valid, cond, inputs["attention_mask"], melody=chroma, cfg_scale=3.0,
                                 temperature=0.0))
    assert torch.equal(got, want)


@pytest.mark.slow
def test_lora_finetune_of_a_converted_export_trains_only_adapters(tmp_path):
    """alm train init_from=<converted export> with model.lora_rank: the optimizer holds the adapters
    only (T5 and codec are outside the LM, the base is frozen); the run's export keeps the converted
    base weights bit for bit, and its --format transformers export is base + (alpha / r) B A."""
    from safetensors.torch import load_file

    from alm.convert_musicgen import convert, write_transformers_from
    from alm.export import load_pretrained
    from alm.models.musicgen import is_adapter
    from helpers import REPO, alm

    exp = convert(str(make_source(tmp_path, card=32, positions=128)), tmp_path / "exp")  # the demo codec's 32 codes
    run = tmp_path / "run"
    alm("train", str(REPO / "recipes" / "tiny" / "musicgen.yaml"), f"run_dir={run}", f"init_from={exp}",
        f"model.text_encoder={exp / 'text_encoder'}", "model.text_max_len=256", "model.dim=32", "model.n_layer=2",
        "model.n_head=4", "model.ffn_dim=64", "model.cond_dim=24", "model.max_seq_len=128", "model.dropout=0.0",
        "model.lora_rank=2", "model.lora_alpha=4.0", "model.lora_targets=self_attn.q,cross_attn.v",
        "trainer.max_steps=3", "trainer.ckpt_every_n_steps=3", "trainer.val_every_n_steps=0",
        "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu", "data.batch_size=4",
        "data.segment_seconds=0.5", "data.num_workers=0", "data.shuffle_buffer=8", "wandb.enabled=false")
    ckpt = torch.load(next(run.glob("checkpoints/step-*/checkpoint.ckpt")), map_location="cpu", weights_only=True)
    state = ckpt["optimizer_states"][0]["state"]
    assert len(state) == 2 * 2 * 2  # 2 layers x 2 sites x (A, B): nothing else is optimised
    alm("export", str(run), "--out", str(tmp_path / "ft"))
    # the run trained on the synthetic set's demo-codec codes, so `--format transformers` refuses it (no
    # EnCodec); the merged transformers folder is written with the converted EnCodec instead
    p = alm("export", str(run), "--out", str(tmp_path / "no"), "--format", "transformers", check=False)
    assert p.returncode == 2 and "not an EnCodec" in p.stderr
    write_transformers_from(load_pretrained(tmp_path / "ft"), exp / "text_encoder", exp / "codec", tmp_path / "ft-hf")
    base, ft = load_file(exp / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    assert set(ft) - set(base) == {k for k in ft if is_adapter(k)} and len(set(ft) - set(base)) == 8
    for k, v in base.items():
        assert torch.equal(ft[k], v), k  # the base did not move
    merged = load_file(tmp_path / "ft-hf" / "model.safetensors")
    moved = 0
    for i in range(2):
        for site, hf_site in (("self_attn.q", "self_attn.q_proj"), ("cross_attn.v", "encoder_attn.v_proj")):
            a, b = ft[f"blocks.{i}.{site}.lora_a"], ft[f"blocks.{i}.{site}.lora_b"]
            want = base[f"blocks.{i}.{site}.weight"] + 2.0 * b @ a  # alpha / r = 2
            got = merged[f"decoder.model.decoder.layers.{i}.{hf_site}.weight"]
            assert torch.allclose(got, want, atol=1e-6)
            moved += int(b.abs().max() > 0)
    assert moved == 4  # every adapter trained


def test_melody_convert_and_transformers_round_trip(tmp_path):
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    from alm.config import from_yaml_text
    from alm.convert_musicgen import convert
    from alm.export import load_pretrained, write_export

    src = make_source(tmp_path, melody=True)
    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(src).eval()
    exp = convert(str(src), tmp_path / "exp")
    lm = load_pretrained(exp)
    assert lm.cfg.cond_mode == "prefix" and (exp / "codec" / "preprocessor_config.json").is_file()
    cfg = from_yaml_text((exp / "config.yaml").read_text(), "config.yaml")
    back = MusicgenMelodyForConditionalGeneration.from_pretrained(write_export(lm, cfg, tmp_path / "hf",
                                                                               fmt="transformers")).eval()
    inputs = AutoTokenizer.from_pretrained(tmp_path / "hf")(PROMPTS, padding=True, return_tensors="pt")
    chroma = torch.nn.functional.one_hot(torch.arange(21).remainder(12).view(3, 7), 12).float()
    codes = step_codes(3, 10)
    with torch.no_grad():
        a, b = (m(**inputs, input_features=chroma, decoder_input_ids=codes.reshape(3 * K, 10)).logits for m in (hf, back))
    assert (a - b).abs().max() < TOL


@pytest.mark.slow
def test_alm_convert_musicgen_of_an_uncached_hub_id_offline_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO, env

    e = dict(env(), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    p = subprocess.run([sys.executable, "-m", "alm", "convert", "musicgen", "facebook/musicgen-not-cached", "--out",
                        str(tmp_path / "out")], cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "'facebook/musicgen-not-cached'" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert not os.path.exists(tmp_path / "out")
