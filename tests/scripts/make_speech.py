"""Regenerate tests/fixtures/speech/: real (synthesised) English speech in LibriSpeech's layout.

    python tests/scripts/make_speech.py [OUT]      # default OUT: tests/fixtures/speech

Needs the espeak-ng program (apt-get install espeak-ng; not needed to USE the fixtures: the
clips are committed, because CI machines do not have espeak-ng). Every clip is
`espeak-ng -v VOICE -s SPEED -w out.wav TEXT` (22.05 kHz), scaled by 0.5, resampled to 16 kHz
mono with soxr and written as 16-bit FLAC. Same espeak-ng, libsoxr and libsndfile versions -> the same bytes
(the committed set was made with eSpeak NG 1.51); the script checks every clip is 1.8-3.3 s.

Layout written (exactly LibriSpeech's, `LibriSpeech/{subset}/{speaker}/{chapter}/`):

    OUT/LibriSpeech/train-clean-100/{spk}/{chap}/{spk}-{chap}-{utt:04d}.flac
    OUT/LibriSpeech/train-clean-100/{spk}/{chap}/{spk}-{chap}.trans.txt   lines "{utt id} TRANSCRIPT"
    OUT/LibriSpeech/dev-clean/...                                          (held-out speakers)
    OUT/LibriSpeech/SPEAKERS.TXT                                           (the voice and speed of each)
    OUT/translations.en_fr.tsv      id<TAB>sentence<TAB>translation for a few utterances (AST tests)
    OUT/covost2/                    the same few utterances as a Common Voice + CoVoST 2 tree
                                    (clips/*.mp3, validated.tsv, covost_v2.en_fr.{train,dev}.tsv)
    OUT/cvss/                       their French translations spoken by espeak-ng's French voice, laid out
                                    as a CVSS-C folder: {train,dev}.tsv (`clip<TAB>text`, no header) and
                                    {train,dev}/<clip>.wav (16 kHz mu-law WAV to stay small; the release: 24 kHz)

Transcripts are upper case, words and apostrophes only, as LibriSpeech writes them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "speech"
RATE = 16000
MIN_S, MAX_S = 1.8, 3.3
GAIN = 0.5  # espeak-ng peaks at full scale; half leaves headroom and saves ~1 bit per FLAC sample

# speaker id -> (subset, chapter, espeak-ng voice, words per minute)
SPEAKERS = {
    "1001": ("train-clean-100", "2001", "en-us", 165),
    "1002": ("train-clean-100", "2002", "en-gb", 150),
    "1003": ("train-clean-100", "2003", "en-us+f3", 175),
    "1004": ("train-clean-100", "2004", "en-gb-x-rp", 140),
    "1005": ("train-clean-100", "2005", "en-us+m3", 155),
    "1006": ("dev-clean", "2006", "en-gb-scotland", 160),
    "1007": ("dev-clean", "2007", "en-us+f2", 150),
}

# speaker id -> its utterances, in order (utterance numbers 0000, 0001, ...)
SENTENCES = {
    "1001": [
        "THE CAT SAT ON THE MAT BY THE DOOR",
        "SHE OPENED THE WINDOW TO LET IN THE AIR",
        "A COLD WIND BLEW ACROSS THE EMPTY FIELD",
        "WE WALKED HOME ALONG THE RIVER AT NIGHT",
        "HIS BROTHER READ THE LETTER TWICE",
        "THE BELLS RANG OUT OVER THE LITTLE TOWN",
    ],
    "1002": [
        "I HAVE NEVER SEEN SO MANY STARS",
        "THE OLD MAN KEPT A GARDEN OF ROSES",
        "THEY WAITED FOR THE TRAIN IN THE RAIN",
        "HER VOICE WAS SOFT AND VERY CLEAR",
        "THE SHIP SAILED SLOWLY OUT OF THE HARBOUR",
        "YOU MUST NOT FORGET YOUR PROMISE",
    ],
    "1003": [
        "THE CHILDREN PLAYED IN THE SNOW ALL DAY",
        "A GREEN BIRD SANG IN THE TALL TREE",
        "HE COULD NOT FIND HIS HAT OR HIS COAT",
        "THE BREAD WAS WARM AND THE MILK WAS SWEET",
        "WE SHALL MEET AGAIN IN THE SPRING",
        "THE CANDLE BURNED LOW ON THE TABLE",
    ],
    "1004": [
        "THE KING GAVE A FEAST FOR HIS PEOPLE",
        "SHE WROTE HER NAME IN THE BOOK",
        "THE HORSE RAN FAST OVER THE HILL",
        "IT WAS A LONG AND QUIET WINTER",
        "THE DOCTOR CAME EARLY IN THE MORNING",
        "MY FATHER BUILT THIS HOUSE OF STONE",
    ],
    "1005": [
        "THE SUN ROSE BEHIND THE DARK MOUNTAINS",
        "THEY SPOKE OF MANY STRANGE THINGS",
        "A SMALL BOAT LAY ON THE SAND",
        "THE GIRL LAUGHED AND RAN AWAY",
        "HE TOOK THE KEY FROM HIS POCKET",
        "THE DOG SLEPT BY THE WARM FIRE",
    ],
    "1006": [
        "THE ROAD WAS WET AND FULL OF LEAVES",
        "SHE SMILED AT THE STRANGER AT THE GATE",
        "THE CLOCK STRUCK TWELVE IN THE HALL",
    ],
    "1007": [
        "WE FOUND A PATH THROUGH THE WOOD",
        "THE TEACHER ASKED A SIMPLE QUESTION",
        "THE LAMP WAS LIT IN EVERY ROOM",
    ],
}

# utterance id -> French translation (AST): a few train utterances and one held-out one
FRENCH = {
    "1001-2001-0000": "le chat était assis sur le tapis près de la porte",
    "1001-2001-0001": "elle ouvrit la fenêtre pour laisser entrer l'air",
    "1002-2002-0002": "ils attendaient le train sous la pluie",
    "1003-2003-0001": "un oiseau vert chantait dans le grand arbre",
    "1004-2004-0001": "elle écrivit son nom dans le livre",
    "1005-2005-0005": "le chien dormait près du feu chaud",
    "1006-2006-0002": "l'horloge sonna midi dans le couloir",
}
COVOST_SPLIT = {"1006": "dev", "1007": "dev"}  # speaker -> CoVoST split; others train
FRENCH_VOICE = ("fr", 175)  # espeak-ng voice and words per minute of the CVSS-style target speech
CLIENT = "c0ffee{:s}" + "0" * 54  # Common Voice client ids are 64 hex digits (a sha256); {:s}: the speaker


def utterances() -> list[tuple[str, str, str, str, int, str]]:
    """[(utt id, subset, voice, speaker, speed, transcript)] in a fixed order."""
    out = []
    for spk, (subset, chap, voice, speed) in SPEAKERS.items():
        for i, text in enumerate(SENTENCES[spk]):
            out.append((f"{spk}-{chap}-{i:04d}", subset, voice, spk, speed, text))
    return out


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's waveform of `text`, resampled to 16 kHz float32 mono."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("make_speech.py needs espeak-ng (apt-get install espeak-ng); the committed "
                         "tests/fixtures/speech/ does not")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1) * GAIN
    return soxr.resample(mono, rate, RATE).astype(np.float32)


def mp3_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono MP3 (Common Voice ships mp3) encoded with PyAV's libmp3lame."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="mono")
        stream.bit_rate = 32000
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def tsv(rows: list[list[str]]) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def write_covost(out: Path, clips: dict[str, np.ndarray], texts: dict[str, str]) -> None:
    """out/covost2/: clips/common_voice_en_{n}.mp3, validated.tsv, covost_v2.en_fr.{train,dev}.tsv."""
    root = out / "covost2"
    (root / "clips").mkdir(parents=True)
    validated = [["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale",
                  "segment"]]
    per_split: dict[str, list[list[str]]] = {}
    for n, (utt, french) in enumerate(FRENCH.items()):
        spk = utt.split("-")[0]
        name = covost_clip(n)
        (root / "clips" / name).write_bytes(mp3_bytes(clips[utt]))
        # Common Voice keeps the sentence as typed: sentence case with punctuation
        sentence = texts[utt].capitalize() + "."
        client = CLIENT.format(spk)
        validated.append([client, name, sentence, "2", "0", "", "", "", "en", ""])
        split = COVOST_SPLIT.get(spk, "train")
        per_split.setdefault(split, [["path", "sentence", "translation", "client_id"]]).append(
            [name, sentence, french, client])
    (root / "validated.tsv").write_text(tsv(validated), encoding="utf-8")
    for split, rows in per_split.items():
        (root / f"covost_v2.en_fr.{split}.tsv").write_text(tsv(rows), encoding="utf-8")


def covost_clip(n: int) -> str:
    """The Common Voice file name of the n-th FRENCH entry (the covost2/ and cvss/ trees share it)."""
    return f"common_voice_en_{7000001 + n}.mp3"


def write_cvss(out: Path) -> None:
    """out/cvss/: a CVSS-C-style folder for the covost2/ clips: {split}.tsv lines `clip<TAB>French text`
    and {split}/<clip>.wav, the text spoken by espeak-ng's French voice (16 kHz, 8-bit mu-law)."""
    root = out / "cvss"
    per_split: dict[str, list[list[str]]] = {}
    for n, (utt, french) in enumerate(FRENCH.items()):
        split = COVOST_SPLIT.get(utt.split("-")[0], "train")
        clip = covost_clip(n)
        audio = speak(french, *FRENCH_VOICE)
        if not 1.0 <= len(audio) / RATE <= MAX_S:
            raise SystemExit(f"cvss {clip}: {french!r} lasts {len(audio) / RATE:.2f} s, outside 1.0-{MAX_S} s")
        (root / split).mkdir(parents=True, exist_ok=True)
        sf.write(str(root / split / f"{clip}.wav"), audio, RATE, format="WAV", subtype="ULAW")
        per_split.setdefault(split, []).append([clip, french])
    for split, rows in per_split.items():
        (root / f"{split}.tsv").write_text(tsv(rows), encoding="utf-8")


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    for name in ("LibriSpeech", "covost2", "cvss", "translations.en_fr.tsv"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    clips: dict[str, np.ndarray] = {}
    texts: dict[str, str] = {}
    trans: dict[Path, list[str]] = {}
    total_s = 0.0
    for utt, subset, voice, spk, speed, text in utterances():
        chap = utt.split("-")[1]
        folder = out / "LibriSpeech" / subset / spk / chap
        folder.mkdir(parents=True, exist_ok=True)
        audio = speak(text, voice, speed)
        seconds = len(audio) / RATE
        if not MIN_S <= seconds <= MAX_S:
            raise SystemExit(f"{utt} ({voice}, {speed} wpm) lasts {seconds:.2f} s, outside {MIN_S}-{MAX_S} s: "
                             "change its sentence or speed")
        total_s += seconds
        sf.write(str(folder / f"{utt}.flac"), audio, RATE, format="FLAC", subtype="PCM_16")
        trans.setdefault(folder / f"{spk}-{chap}.trans.txt", []).append(f"{utt} {text}\n")
        clips[utt], texts[utt] = audio, text
    for path, lines in trans.items():
        path.write_text("".join(lines), encoding="utf-8")
    speakers = [";ID  |SUBSET          |ESPEAK-NG VOICE |WPM\n"]
    speakers += [f"{spk:<5}|{subset:<16}|{voice:<16}|{speed}\n" for spk, (subset, _, voice, speed) in SPEAKERS.items()]
    (out / "LibriSpeech" / "SPEAKERS.TXT").write_text("".join(speakers), encoding="utf-8")
    (out / "translations.en_fr.tsv").write_text(
        tsv([["id", "sentence", "translation"]] + [[u, texts[u], fr] for u, fr in FRENCH.items()]), encoding="utf-8")
    write_covost(out, clips, texts)
    write_cvss(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(clips)} utterances, {total_s:.1f} s of speech, {size} bytes under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
