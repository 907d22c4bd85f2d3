"""KL divergence between a classifier's label distributions on generated and reference audio.

As audiocraft's KLDivergenceMetric (AudioGen / MusicGen) computes it: each file's label
distribution is the softmax of the classifier's logits, averaged over the file's segments; files
are paired (here by name); per pair

    kld_pq = KL(p || q) = sum_c p_c (log p_c - log(q_c + 1e-6))   p: reference, q: generated
    kld_qp = KL(q || p) = sum_c q_c (log q_c - log(p_c + 1e-6))

(torch's kl_div(log(q + eps), p): 0 log 0 = 0); the reported values are means over the pairs, with
audiocraft's keys: kld (= kld_pq), kld_pq, kld_qp, kld_both (= kld_pq + kld_qp).
"""

from __future__ import annotations

import numpy as np

from alm.errors import UserError

EPS = 1e-6


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> np.ndarray:
    """KL(p || q + eps) along the last axis; p, q: (..., classes) probabilities."""
    from scipy.special import xlogy

    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return (xlogy(p, p) - xlogy(p, q + eps)).sum(-1)


def pair_by_name(generated: dict[str, object], reference: dict[str, object],
                 what: str = "generated and reference") -> list[str]:
    """The names both sides hold, sorted; a name on one side only is a UserError naming it."""
    only_gen = sorted(set(generated) - set(reference))
    only_ref = sorted(set(reference) - set(generated))
    if only_gen or only_ref:
        parts = []
        if only_gen:
            parts.append(f"only generated: {_names(only_gen)}")
        if only_ref:
            parts.append(f"only reference: {_names(only_ref)}")
        raise UserError(f"KLD pairs {what} files by name, and these have no partner: {'; '.join(parts)}")
    return sorted(generated)


def _names(names: list[str], at_most: int = 10) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


class KLDSums:
    """Sums of both KL directions over pairs, added a chunk of pairs at a time (nothing per file is kept)."""

    def __init__(self) -> None:
        self.pq = self.qp = 0.0
        self.n = 0

    def update(self, generated: np.ndarray, reference: np.ndarray) -> None:
        """(pairs, classes) label distributions of the generated files and of their reference partners."""
        if generated.shape != reference.shape:
            raise UserError(f"KLD: the classifier gave {generated.shape[-1]} classes on generated audio and "
                            f"{reference.shape[-1]} on reference audio")
        self.pq += float(kl_divergence(reference, generated).sum())
        self.qp += float(kl_divergence(generated, reference).sum())
        self.n += len(generated)

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise UserError("KLD: no files to compare")
        pq, qp = self.pq / self.n, self.qp / self.n
        return {"kld": pq, "kld_pq": pq, "kld_qp": qp, "kld_both": pq + qp}


def kld(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """{name: (classes,) label distribution} on each side -> audiocraft's four KLD numbers."""
    names = pair_by_name(generated, reference)
    sums = KLDSums()
    if names:
        sums.update(np.stack([generated[n] for n in names]), np.stack([reference[n] for n in names]))
    return sums.result()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)
