"""Evaluation: `alm eval` scores outputs as the papers' reference libraries do (see alm/eval/cli.py)."""
