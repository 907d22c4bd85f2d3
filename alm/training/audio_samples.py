"""Listen to training: at each validation, generate from the first validation example, decode with
the codec, and log the audio (generated and reference) and their spectrograms to W&B; the wavs are
also written to RUN_DIR/samples/ so they exist without W&B.

A stage opts in by giving its LightningModule `sample_codes(batch) -> (generated, reference)`, two
(Q, T) code arrays, and returning this callback from `configure_callbacks()` when
`trainer.audio_samples` > 0. Every rank generates from rank 0's example (broadcast), with the same
seed, so every rank runs the same number of forward passes — ZeRO-3 needs all ranks in each forward,
and ranks generating from their own examples of different lengths would deadlock. Global rank 0
decodes, writes and logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def spectrogram_image(audio: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Log-magnitude spectrogram as a uint8 image (freq x time, low frequencies at the bottom)."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-5)
    db = (db - db.max()).clamp(min=-80) / 80 + 1  # [0, 1], 80 dB range
    return (db.flip(0).numpy() * 255).astype(np.uint8)


def audio_sample_callbacks(cfg) -> list:
    """[AudioSamples] when the run asks for samples (trainer.audio_samples) and has a codec, else []."""
    if not cfg.trainer.audio_samples or not cfg.data.codec:
        return []
    return [AudioSamples(cfg.data.codec, cfg.run_dir, cfg.trainer.audio_samples)]


class AudioSamples(L.Callback):
    def __init__(self, codec: str, run_dir: str, count: int = 1):
        self.codec_name = codec
        self.run_dir = Path(run_dir)
        self.count = count
        self._codec = None
        self._batch = None
        self._disabled = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self._batch = batch

    def _load_codec(self):
        if self._codec is None and not self._disabled:
            from alm.tokenizers.codec import load_codec

            try:
                self._codec = load_codec(self.codec_name, "cpu")
            except Exception as exc:  # e.g. a hub id without network: train on, without samples
                log.warning("audio samples disabled: cannot load codec %r: %s", self.codec_name, exc)
                self._disabled = True
        return self._codec

    def on_fit_start(self, trainer, pl_module) -> None:
        """Rank 0 loads the codec once; every rank learns whether samples are on (all or none may
        generate: a rank generating alone would wait forever for the others under ZeRO-3)."""
        ok = self._load_codec() is not None if trainer.is_global_zero else True
        if trainer.world_size > 1:
            ok = trainer.strategy.broadcast(ok, src=0)
        self._disabled = not ok

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.sanity_checking or self._disabled:
            return
        batch, self._batch = self._batch, None
        if trainer.world_size > 1:  # rank 0's example everywhere: the same forward count on every rank
            cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v
                     for k, v in trainer.strategy.broadcast(cpu, src=0).items()}
        rows = next(v for v in batch.values() if isinstance(v, torch.Tensor)).size(0)
        pairs = [pl_module.sample_codes(batch, i) for i in range(min(self.count, rows))]  # every rank (ZeRO-3)
        if not trainer.is_global_zero:
            return
        codec = self._load_codec()
        if codec is None:
            return
        from alm.tokenizers.codec import decode

        rate = int(codec.config.sampling_rate)
        out = self.run_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        logged = {}
        import soundfile as sf

        for i, (generated, reference) in enumerate(pairs):
            for name, codes in (("generated", generated), ("reference", reference)):
                audio = decode(codec, torch.as_tensor(codes)[None])[0].cpu().numpy()
                path = out / f"step-{trainer.global_step:09d}-{i}-{name}.wav"
                sf.write(path, audio, rate, subtype="PCM_16")
                logged[f"samples/{name}_{i}"] = (audio, rate)
        try:
            self._log_wandb(trainer, logged)
        except Exception as exc:  # logging must never stop training
            log.warning("could not log audio samples to W&B: %s", exc)

    @staticmethod
    def _log_wandb(trainer, logged: dict) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                payload = {}
                for key, (audio, rate) in logged.items():
                    payload[key] = wandb.Audio(audio, sample_rate=rate)
                    payload[key.replace("samples/", "spectrograms/")] = wandb.Image(spectrogram_image(audio))
                lg.experiment.log({**payload, "trainer/global_step": trainer.global_step})
