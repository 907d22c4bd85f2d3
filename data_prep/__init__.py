"""Dataset preparation: a dataset as users download it -> WebDataset shards + manifest.json.

One module per dataset (`audiocaps`, `clotho`, `musiccaps`, `librilight`,
`librispeech_finetuning`, `librispeech`, `covost2`, `wavcaps`, `cvss`) turns the on-disk layout into a list
of samples and skips (`scan`); `pipeline.prepare` decodes/encodes the audio with a worker pool and writes the
shards, the manifest and a summary table. `cli.main` is the `alm prep ...` command.

This package file imports nothing heavy: worker processes import `data_prep.decode` only.
"""

DATASETS = ("audiocaps", "clotho", "musiccaps", "librilight", "librispeech_finetuning", "librispeech", "covost2",
            "wavcaps", "cvss")
