"""The models `alm eval audio` runs on audio: frame embedders (FAD), classifiers (KLD), CLAP (CLAP score).

Every model works on fixed windows of a file, read one at a time (an hour-long file never sits in
memory whole): mono (channel mean), resampled to the model's rate, `window_s` seconds each, the
last one shorter; a tail of 0.15 s or less is dropped (audiocraft drops such segments for PaSST).

--embedder            frames per window                                    loads from
  clap                1: the projected, L2-normalised audio embedding,     transformers ClapModel folder or hub id
                      windows of the feature extractor's max_length_s       (--embedder-model; default laion/clap-htsat-unfused),
                      (an alm clap export: of the model's window)            or an alm clap export (alm export, alm convert clap)
  encodec             the encoder's output frames (D = hidden_size)        transformers EncodecModel folder or hub id
                                                                            (--embedder-model; default facebook/encodec_24khz)
  vggish, panns       what the file returns                                 a TorchScript file (--embedder-model FILE):
  FILE (TorchScript)                                                          these have no transformers class and
                                                                              alm downloads nothing
  DIR                 clap or encodec, by DIR/config.json's model_type

A TorchScript embedder or classifier is a torch.jit.save'd module with an integer attribute
`sample_rate`, whose forward takes a (1, samples) float32 waveform at that rate and returns
(frames, D) embeddings (an embedder) or (1, classes) / (classes,) logits (a classifier).
--classifier (KLD): a transformers audio-classification folder or hub id (AutoModelForAudioClassification
with its feature extractor, e.g. an AST fine-tuned on AudioSet), or a TorchScript file (e.g. PaSST,
which audiocraft uses and which has no transformers class).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from alm.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIN_SECONDS = 0.15
DEFAULT_MODELS = {"clap": "laion/clap-htsat-unfused", "encodec": "facebook/encodec_24khz"}
TORCHSCRIPT_ONLY = ("vggish", "panns")


def list_audio(directory: str | Path, flag: str) -> dict[str, Path]:
    """{id: path} of the audio files under `directory` (recursive); id = relative path without extension."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"{flag} {directory}: no such directory")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in files:
            raise UserError(f"{flag} {directory}: {files[key].name} and {path.name} have the same name {key!r}")
        files[key] = path
    if not files:
        raise UserError(f"{flag} {directory}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def read_windows(path: Path, rate: int, window_s: float) -> Iterator[np.ndarray]:
    """Mono float32 windows of `window_s` seconds at `rate`, read one at a time (see the module docstring)."""
    import soundfile as sf

    from alm.data.audio import resample

    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UserError(f"{path}: not readable audio ({exc})") from exc
    with f:
        native = f.samplerate
        size = max(1, int(round(window_s * native)))
        shortest = int(MIN_SECONDS * native)
        yielded = False
        while True:
            try:
                block = f.read(size, dtype="float32", always_2d=True)  # (frames, channels)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise UserError(f"{path}: unreadable at frame {f.tell()} ({exc})") from exc
            if len(block) == 0 or (len(block) <= shortest):
                break
            yielded = True
            yield resample(block.mean(axis=1), native, rate)
            if len(block) < size:
                break
    if not yielded:
        raise UserError(f"{path}: shorter than {MIN_SECONDS} s: no window to score")


def batched_windows(files: dict[str, Path], model, batch_size: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(names, windows) batches of up to batch_size windows of `files` (name -> path), at the model's rate and
    window length. A model with `any_length` (its feature extractor pads every input to one size) takes any
    windows together; otherwise a batch holds windows of one length. At most 2 x batch_size windows wait."""
    pending: dict[int, tuple[list[str], list[np.ndarray]]] = {}
    waiting = 0
    for name, path in files.items():
        for window in read_windows(path, model.sample_rate, model.window_s):
            key = 0 if model.any_length else len(window)
            names, windows = pending.setdefault(key, ([], []))
            names.append(name)
            windows.append(window)
            waiting += 1
            if len(windows) == batch_size:
                del pending[key]
                waiting -= len(windows)
                yield names, windows
            elif waiting >= 2 * batch_size:  # many different tail lengths: run them as they are
                for names, windows in pending.values():
                    yield names, windows
                pending, waiting = {}, 0
    for names, windows in pending.values():
        yield names, windows


def file_means(files: dict[str, Path], model, fn, batch_size: int) -> dict[str, np.ndarray]:
    """{name: mean over the file's windows of fn(window batch) rows} (fn: list of windows -> (B, X))."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for names, windows in batched_windows(files, model, batch_size):
        for name, row in zip(names, np.asarray(fn(windows), np.float64)):
            sums[name] = sums[name] + row if name in sums else row.copy()
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in files}


# ---- embedders ----------------------------------------------------------------------------------

class ClapEmbedder:
    """transformers ClapModel: audio windows -> one normalised embedding each; texts -> normalised embeddings."""

    def __init__(self, source: str, device: str = "cpu") -> None:
        from alm.embed import is_alm_export

        self.encoder = None
        if is_alm_export(source):  # alm's own towers or a converted CLAP: alm/embed.py embeds its windows
            from alm.embed import load_encoder

            self.encoder = load_encoder(source, device)
            self.sample_rate = self.encoder.sample_rate
            self.window_s = self.encoder.window / self.sample_rate
            self.description = f"clap:{source}"
            return
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        from alm import hub

        self.model = hub.from_pretrained(ClapModel, source, what="CLAP model").eval().to(device)
        self.features = hub.from_pretrained(ClapFeatureExtractor, source, what="CLAP feature extractor")
        self.tokenizer = hub.from_pretrained(AutoTokenizer, source, what="CLAP tokenizer")
        self.device = device
        self.sample_rate = int(self.features.sampling_rate)
        self.window_s = self.features.nb_max_samples / self.sample_rate
        self.description = f"clap:{source}"

    any_length = True  # the feature extractor pads every window to max_length_s

    def embed_windows(self, windows: list[np.ndarray]) -> np.ndarray:
        """B windows of (samples,) at sample_rate, each at most window_s long -> (B, D), L2-normalised."""
        import torch

        if self.encoder is not None:
            return self.encoder.backend.embed_windows([w[: self.encoder.window] for w in windows])
        longest = self.features.nb_max_samples  # resampling can round a full window one sample over: never crop randomly
        inputs = self.features([w[:longest] for w in windows], sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return _normalised(out).cpu().numpy()

    def embed_batch(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """FAD frames: one (1, D) row per window."""
        return [row[None] for row in self.embed_windows(windows)]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.encoder is not None:
            return self.encoder.texts(texts)
        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return _normalised(out).cpu().numpy()

    def embed_files(self, files: dict[str, Path], batch_size: int) -> dict[str, np.ndarray]:
        """One (D,) normalised embedding per file: the mean of its windows' embeddings, renormalised
        (a clip no longer than window_s is exactly get_audio_features of the whole clip)."""
        means = file_means(files, self, self.embed_windows, batch_size)
        return {name: m / max(np.linalg.norm(m), 1e-12) for name, m in means.items()}


def _normalised(out):
    import torch

    emb = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5 returns an output object
    return torch.nn.functional.normalize(emb.float(), dim=-1)


class EncodecEmbedder:
    """transformers EncodecModel: the encoder's latent frames, (frames, hidden_size) per window."""

    def __init__(self, source: str, device: str = "cpu", window_s: float = 10.0) -> None:
        from transformers import EncodecModel

        from alm import hub

        self.model = hub.from_pretrained(EncodecModel, source, what="EnCodec model").eval().to(device)
        self.device = device
        self.sample_rate = int(self.model.config.sampling_rate)
        self.channels = int(self.model.config.audio_channels)
        self.window_s = window_s
        self.description = f"encodec:{source}"

    any_length = False  # a batch holds windows of one length

    def embed_batch(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """B equal-length windows -> B arrays of (frames, D)."""
        import torch

        x = torch.from_numpy(np.stack(windows).astype(np.float32)).to(self.device)  # (B, samples)
        x = x[:, None].expand(-1, self.channels, -1)  # (B, channels, samples): mono copied to every channel
        with torch.no_grad():
            z = self.model.encoder(x)  # (B, D, frames)
        return list(z.transpose(1, 2).cpu().numpy())


class TorchScriptModel:
    """A torch.jit.save'd module with an int attribute `sample_rate` (see the module docstring)."""

    def __init__(self, path: str, flag: str, device: str = "cpu", window_s: float = 10.0, name: str | None = None) -> None:
        import torch

        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; loading still works
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(path, map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"{flag} {path}: not a TorchScript file (torch.jit.save): {str(exc).splitlines()[0]}") from exc
        rate = getattr(self.module, "sample_rate", None)
        if not isinstance(rate, int) or rate <= 0:
            raise UserError(f"{flag} {path}: the TorchScript module needs an integer attribute sample_rate (got {rate!r})")
        self.sample_rate, self.window_s, self.device = rate, window_s, device
        self.description = f"{name or 'torchscript'}:{path}"

    def forward(self, window: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(window, np.float32))[None].to(self.device)  # (1, samples)
        with torch.no_grad():
            return self.module(x).float().cpu().numpy()

    any_length = False

    def embed_batch(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        return [self.embed(w) for w in windows]  # the file's contract is one (1, samples) waveform per call

    def probs_batch(self, windows: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.probs(w) for w in windows])

    def embed(self, window: np.ndarray) -> np.ndarray:
        y = self.forward(window)
        y = y.reshape(1, -1) if y.ndim == 1 else (y[0] if y.ndim == 3 and len(y) == 1 else y)
        if y.ndim != 2:
            raise UserError(f"{self.description}: forward returned shape {y.shape}, expected (frames, D)")
        return y

    def probs(self, window: np.ndarray) -> np.ndarray:
        from alm.eval.kld import softmax

        y = self.forward(window)
        if y.ndim == 2 and len(y) == 1:
            y = y[0]
        if y.ndim != 1:
            raise UserError(f"{self.description}: forward returned shape {y.shape}, expected (1, classes) logits")
        return softmax(y)


def load_embedder(spec: str, model: str | None = None, device: str = "cpu", window_s: float = 10.0):
    """--embedder SPEC [--embedder-model MODEL] -> an object with sample_rate, window_s, description, embed(window)."""
    if spec in TORCHSCRIPT_ONLY:
        if model is None:
            raise UserError(f"--embedder {spec}: its weights have no transformers class and alm downloads nothing: save the "
                            "model as TorchScript (forward: (1, samples) -> (frames, D), an int attribute sample_rate) "
                            "and pass --embedder-model FILE")
        return TorchScriptModel(model, "--embedder-model", device, window_s, name=spec)
    if spec == "clap":
        return ClapEmbedder(model or DEFAULT_MODELS["clap"], device)
    if spec == "encodec":
        return EncodecEmbedder(model or DEFAULT_MODELS["encodec"], device, window_s)
    path = Path(spec)
    if path.is_file():
        return TorchScriptModel(spec, "--embedder", device, window_s)
    if path.is_dir():
        kind = _model_type(path, "--embedder")
        if kind == "clap":
            return ClapEmbedder(spec, device)
        if kind == "encodec":
            return EncodecEmbedder(spec, device, window_s)
        raise UserError(f"--embedder {spec}: a {kind!r} model; a model folder must hold a clap or encodec model")
    raise UserError(f"--embedder {spec}: expected vggish, panns, clap, encodec, a TorchScript file or a model folder")


def _model_type(path: Path, flag: str) -> str:
    from alm.embed import export_stage, is_alm_export

    if is_alm_export(path):  # alm's CLAP exports embed through alm/embed.py
        stage = export_stage(path)
        if stage != "clap":
            raise UserError(f"{flag} {path}: an alm export of stage {stage!r}; a model folder must hold a clap or "
                            "encodec model (an alm clap export, or a transformers folder)")
        return "clap"
    try:
        return str(json.loads((path / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{flag} {path}: not a transformers model folder (config.json with model_type): {exc}") from exc


# ---- classifiers (KLD) --------------------------------------------------------------------------

class HFClassifier:
    """transformers AutoModelForAudioClassification + its feature extractor: softmax of the logits per window."""

    def __init__(self, source: str, device: str = "cpu", window_s: float = 10.0) -> None:
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        from alm import hub

        self.model = hub.from_pretrained(AutoModelForAudioClassification, source, what="classifier").eval().to(device)
        self.features = hub.from_pretrained(AutoFeatureExtractor, source, what="classifier feature extractor")
        self.sample_rate = int(self.features.sampling_rate)
        self.window_s, self.device = window_s, device
        self.description = f"classifier:{source}"

    any_length = False  # feature extractors differ in how they pad: batch equal lengths only

    def probs_batch(self, windows: list[np.ndarray]) -> np.ndarray:
        """B equal-length windows -> (B, classes) softmax of the logits."""
        import torch

        from alm.eval.kld import softmax

        inputs = self.features(windows, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        return softmax(logits.float().cpu().numpy())


def load_classifier(spec: str, device: str = "cpu", window_s: float = 10.0):
    if Path(spec).is_file():
        return TorchScriptModel(spec, "--classifier", device, window_s)
    return HFClassifier(spec, device, window_s)


def label_distributions(classifier, files: dict[str, Path], batch_size: int) -> dict[str, np.ndarray]:
    """Each file's label distribution: the mean over its windows of the softmax of the logits."""
    return file_means(files, classifier, classifier.probs_batch, batch_size)
