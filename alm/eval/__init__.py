"""`alm eval`: score model outputs the way the papers' reference libraries score them.

One subcommand per kind of output (alm/eval/cli.py lists them); every one writes the same
results.json layout and stdout table (alm/eval/results.py) and, given `--run RUN_DIR`, logs its
metrics into that run's W&B run as eval/<task>/<metric>.
"""
