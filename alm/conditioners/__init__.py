"""Conditioners: what a conditional LM (MusicGen, AudioGen) attends to, each one small file.

    t5.py      text -> the states of a frozen T5 / Flan-T5 encoder (B, L, D) + mask (B, L)
    chroma.py  a reference wav -> its chroma (frames, 12), argmax one-hot (MusicGen-Melody)

Conditioners are plain objects, not submodules of the LM: they are never in its state dict, its
optimizer or its ZeRO partitions, and stay in eval mode whatever the LM's mode.
"""
