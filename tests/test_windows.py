"""Every window of a long recording per epoch: coverage, offsets, spread over batches, exact O(1) resume."""


import numpy as np
import pytest

from alm.data import index
from alm.data.shards import ShardWriter, key_from_id, npy_bytes
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets
from alm.models.acoustic_lm import AcousticLMConfig, aligned_window, aligned_windows
from alm.stages import acoustic, semantic, soundstorm
from alm.models.soundstorm import SoundStormConfig
from alm.models.transformer import ConditionedLMConfig

from test_data_resume import positions_before, run, seen

W = 10  # tokens per window in the stream tests (semantic max_len = W + 2)
LENGTHS = [95, 7, 40, 123, 10, 61]  # long recordings, a short clip, one of exactly one window


def covered(windows, n):
    """Per frame, how many windows hold it."""
    hits = np.zeros(n, dtype=np.int64)
    for f0, count, _, _ in windows:
        hits[f0 : f0 + count] += 1
    return hits


@pytest.mark.parametrize("n,w", [(180_000, 100), (1000, 37), (100, 100), (199, 100), (40, 100), (1, 1)])
def test_windows_cover_a_recording_once_up_to_the_slack(n, w):
    """A 1-hour recording at 50 Hz in 2-s windows is 1800 windows; every frame in at most one,
    all but < w frames in exactly one, full-length windows only (the short clip: one, whole)."""
    offsets = set()
    for epoch in range(6):
        ws = aligned_windows(n, 0, 50.0, 50.0, w, np.random.default_rng([0, epoch, 1]))
        hits = covered(ws, n)
        assert hits.max() == 1
        assert n - hits.sum() < w
        assert all(c == min(w, n) for _, c, _, _ in ws) and len(ws) == max(1, n // w)
        offsets.add(ws[0][0])
    if n > w and n % w >= 2:
        assert len(offsets) > 1  # the uncovered frames move between epochs


def test_one_window_is_the_single_random_crop_of_before():
    for n, w in ((150, 100), (40, 100), (1000, 37)):
        for seed in range(4):
            one = aligned_window(n, 0, 50.0, 50.0, w, np.random.default_rng(seed))
            assert aligned_windows(n, 0, 50.0, 50.0, w, np.random.default_rng(seed), every=False) == [one]
            f0, count, _, _ = one
            assert count == min(n, w) and 0 <= f0 <= n - count
    # below two windows, every window is that same crop
    assert aligned_windows(150, 0, 50.0, 50.0, 100, np.random.default_rng(3)) == \
        [aligned_window(150, 0, 50.0, 50.0, 100, np.random.default_rng(3))]


def test_windows_aligned_to_the_semantic_grid():
    """75 Hz codec frames, 50 Hz semantic tokens: windows start on shared boundaries (every 3rd
    frame), the semantic spans are disjoint and inside the clip."""
    n_frames, n_sem = 75 * 60, 50 * 60
    ws = aligned_windows(n_frames, n_sem, 75.0, 50.0, 74, np.random.default_rng(5))  # 74 frames: stride 75
    assert len(ws) == 60 and all(f0 % 3 == 0 for f0, _, _, _ in ws)
    assert covered(ws, n_frames).max() == 1
    sem = covered([(s0, ns, 0, 0) for _, _, s0, ns in ws], n_sem)
    assert sem.max() == 1 and all(s0 + ns <= n_sem for _, _, s0, ns in ws)
    for f0, _, s0, _ in ws:
        assert s0 == f0 * 50 // 75


def test_stage_examples_every_window():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(4, 520))
    sem = rng.integers(0, 5, size=520)
    sample = {"codes.npy": npy_bytes(codes), "semantic.npy": npy_bytes(sem), "__key__": "k"}
    c = AcousticLMConfig(vocab_size=5 + 2 * 8 + 3, semantic_vocab=5, codebook_size=8, target_levels=2,
                         max_seq_len=512, window_s=1.0)
    f = AcousticLMConfig(vocab_size=4 * 8 + 3, codebook_size=8, prefix_levels=2, target_levels=2, max_seq_len=512,
                         window_s=1.0)
    s = SoundStormConfig(semantic_vocab=5, codebook_size=8, n_q=4, window_s=1.0)
    short = {"codes.npy": npy_bytes(codes[:, :75]), "semantic.npy": npy_bytes(sem[:75]), "__key__": "k"}
    for stage, model in ((acoustic, c), (acoustic, f), (soundstorm, s)):
        every = stage.make_example(sample, np.random.default_rng(1), model, every=True)
        one = stage.make_example(sample, np.random.default_rng(1), model)
        assert len(every) == 10 and isinstance(one, dict)  # 520 frames at 50 Hz, 1-s windows
        (alone,) = stage.make_example(short, np.random.default_rng(1), model, every=True)  # < 2 windows: the crop
        crop = stage.make_example(short, np.random.default_rng(1), model)
        assert all(np.array_equal(alone[k], crop[k]) for k in crop)
    frames = np.tile(np.arange(520), (4, 1))  # codes = frame numbers
    big = SoundStormConfig(semantic_vocab=5, codebook_size=1024, n_q=4, window_s=1.0)
    windows = soundstorm.make_example({**sample, "codes.npy": npy_bytes(frames)}, np.random.default_rng(1), big, every=True)
    starts = [int(e["codes"][0, 0]) for e in windows]
    assert all(np.array_equal(e["codes"], frames[:, f0 : f0 + 50]) for e, f0 in zip(windows, starts))
    assert all(np.array_equal(e["semantic"], sem[f0 : f0 + 50]) for e, f0 in zip(windows, starts))
    assert covered([(f0, 50, 0, 0) for f0 in starts], 520).max() == 1
    ids = semantic.make_example({"semantic.npy": npy_bytes(np.arange(95))}, np.random.default_rng(2), W + 2,
                                ConditionedLMConfig(vocab_size=200), every=True)
    body = [e["tokens"][1:] for e in ids]
    assert [len(b) for b in body[:-1]] == [W] * 8  # 9 windows of 10; EOS only where a window ends the clip
    assert covered([(int(b[0]), W, 0, 0) for b in body], 95).max() == 1
    assert semantic.make_example({"semantic.npy": npy_bytes(np.arange(7))}, np.random.default_rng(2), W + 2,
                                 ConditionedLMConfig(vocab_size=200), every=True)["tokens"].tolist() == [198, *range(7), 199]  # a short clip: whole + EOS


# -- the stream: windows flattened into examples -----------------------------------------------------------

class Decodes:
    n = 0


def window_example(sample, rng):
    """The semantic stage's make_example (every window), tokens = frame numbers + the recording's id."""
    Decodes.n += 1
    out = semantic.make_example(sample, rng, max_len=W + 2, model=ConditionedLMConfig(vocab_size=10_000), every=True)
    out = out if isinstance(out, list) else [out]
    rec = int(sample["__key__"][1:])
    return [{"rec": rec, "first": int(e["tokens"][1]), "n": len(e["tokens"]) - 1, "r": float(rng.random())} for e in out]


def collate(examples):
    return {"keys": [(e["rec"], e["first"]) for e in examples], "r": [e["r"] for e in examples]}


def recordings(tmp_path, lengths=LENGTHS, per_shard=2):
    out = tmp_path / "rec"
    with ShardWriter(out, "train", max_count=per_shard) as w:
        for i, n in enumerate(lengths):
            w.write({"__key__": key_from_id(f"r{i}"), "semantic.npy": npy_bytes(np.arange(n) + 1000 * i)})
    return str(out)


def stream(spec, rank=0, world=1, positions=None, infinite=True, batch_size=3, buffer=8, **kw):
    return ShardStream(resolve_shard_sets(spec), window_example, collate, batch_size=batch_size, seed=5,
                       shuffle_buffer=buffer, infinite=infinite, rank_world=(rank, world), positions=positions, **kw)




def epoch_windows(spec, epoch_batches):
    """{recording: [first frame of each window]} of one pass."""
    got = {}
    for b in epoch_batches:
        for rec, first in b["keys"]:
            got.setdefault(rec, []).append(first - 1000 * rec)
    return got


def test_an_epoch_yields_every_window_of_every_recording_spread_over_batches(tmp_path):
    spec = recordings(tmp_path)
    one = list(make_loader(stream(spec, infinite=False), 0))
    got = epoch_windows(spec, one)
    assert sorted(got) == list(range(len(LENGTHS)))
    for rec, n in enumerate(LENGTHS):
        starts = sorted(got[rec])
        assert len(starts) == max(1, n // W)
        hits = covered([(s, min(W, n), 0, 0) for s in starts], n)
        assert hits.max() == 1 and n - hits.sum() < W
    by_batch = [{rec for rec, _ in b["keys"]} for b in one]
    assert sum(len(recs) > 1 for recs in by_batch) > len(by_batch) / 2  # the buffer (8) mixes recordings
    longest = LENGTHS.index(max(LENGTHS))
    assert sum(longest in recs for recs in by_batch) >= 5  # its 12 windows land in many batches


def test_offsets_change_between_epochs(tmp_path):
    spec = recordings(tmp_path)
    batches = run(make_loader(stream(spec, batch_size=1, buffer=1), 0), 2 * sum(max(1, n // W) for n in LENGTHS))
    half = len(batches) // 2
    e0, e1 = epoch_windows(spec, batches[:half]), epoch_windows(spec, batches[half:])
    assert {r: sorted(v) for r, v in e0.items()} != {r: sorted(v) for r, v in e1.items()}
    assert sorted(e0) == sorted(e1) == list(range(len(LENGTHS)))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("per_shard,rank_world", [(2, (0, 1)), (2, (1, 2)), (6, (1, 2))])  # 3 shards, or 1 < readers
def test_resume_mid_recording_is_exact(tmp_path, workers, per_shard, rank_world):
    spec = recordings(tmp_path, per_shard=per_shard)
    ref = run(make_loader(stream(spec, *rank_world), workers), 30)  # several epochs
    assert [b["_index"] for b in ref] == list(range(30))
    inside = [b for b in range(1, 30) if ref[b - 1]["_state"].state["window"] > 0]
    assert inside, "no batch ended inside a recording"
    for b in sorted({1, 4, 11, 23, *inside[:3]}):
        got = run(make_loader(stream(spec, *rank_world, positions=positions_before(ref, b)), workers), 30 - b)
        assert seen(got) == seen(ref[b:]), f"resume at batch {b}"


def test_resume_with_token_budget_inside_a_recording(tmp_path):
    spec = recordings(tmp_path)
    kw = dict(max_tokens=25, length=lambda e: e["n"])
    ref = run(make_loader(stream(spec, **kw), 2), 30)
    assert max(len(b["keys"]) for b in ref) > 1
    for b in (1, 6, 13, 22):
        got = run(make_loader(stream(spec, positions=positions_before(ref, b), **kw), 2), 30 - b)
        assert seen(got) == seen(ref[b:]), f"resume at batch {b}"


def test_resume_in_the_middle_of_an_hour_long_recording_decodes_it_once(tmp_path):
    """One 1-hour recording at 50 Hz in 2-s windows (1800 examples), batch 4, buffer 8: resuming at
    batch 300 (window ~1208) reads the recording once and decodes it once, and continues exactly."""
    spec = recordings(tmp_path, lengths=[180_000], per_shard=1)

    def big(sample, rng):
        Decodes.n += 1
        ids = semantic.make_example(sample, rng, max_len=102, model=ConditionedLMConfig(vocab_size=200_000), every=True)
        return [{"rec": 0, "first": int(e["tokens"][1]), "n": 100, "r": 0.0} for e in ids]

    def mk(positions=None):
        return ShardStream(resolve_shard_sets(spec), big, collate, batch_size=4, seed=5, shuffle_buffer=8,
                           rank_world=(0, 1), positions=positions)

    ref = run(mk(), 302)
    pos = positions_before(ref, 300)
    assert pos[0]["window"] > 1000 and pos[0]["epoch"] == 0
    index.Reads.samples, Decodes.n = 0, 0
    got = run(mk(pos), 2)
    assert seen(got) == seen(ref[300:302])
    assert index.Reads.samples == 2 and Decodes.n == 2  # the buffer's refill + the recording itself, not 1200 replays


def test_old_positions_without_window_index_still_resume(tmp_path):
    """A checkpoint from before windows: buffer ids (shard, position), no `window` key."""
    spec = recordings(tmp_path, lengths=[5, 6, 7, 8, 9, 4], per_shard=2)  # all short: one window each
    ref = run(make_loader(stream(spec), 0), 6)
    pos = positions_before(ref, 2)
    old = {w: {**{k: v for k, v in s.items() if k != "window"}, "buffer": [i[:2] for i in s["buffer"]]}
           for w, s in pos.items()}
    got = run(make_loader(stream(spec, positions=old), 0), 4)
    assert seen(got) == seen(ref[2:])


def test_decodes_once_per_recording_per_epoch(tmp_path):
    spec = recordings(tmp_path)
    Decodes.n = 0
    n = sum(len(b["keys"]) for b in make_loader(stream(spec, infinite=False), 0))
    assert n == sum(max(1, k // W) for k in LENGTHS) and Decodes.n == len(LENGTHS)


def test_windows_one_is_today_behaviour_for_the_stages():
    """data.windows=one: the stages get every=False (one crop), data.windows=all: every window."""
    from pathlib import Path

    from alm.config import load_recipe

    TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "semantic.yaml")
    for mode, n in (("one", None), ("all", 10)):
        cfg = load_recipe(TINY, [f"data.windows={mode}", "data.max_len=12"])
        ex = semantic.STAGE.make_example(cfg)({"semantic.npy": npy_bytes(np.arange(100) % 60)}, np.random.default_rng(0))
        assert (isinstance(ex, dict) if n is None else len(ex) == n)
    with pytest.raises(Exception, match="data.windows"):
        load_recipe(TINY, ["data.windows=some"])
