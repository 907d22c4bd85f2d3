"""Next-token sampling: top_p <= 0 is greedy (no NaN), meaningless settings are refused."""

import pytest
import torch

from alm.errors import UserError
from alm.models.sampling import sample_next


def test_small_or_zero_top_p_keeps_the_top_token():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 9.0, 1.0, 2.0]])
    g = torch.Generator().manual_seed(0)
    for top_p in (0.0, -1.0, 1e-9):
        assert sample_next(logits, top_p=top_p, generator=g).tolist() == [4, 2]
    # top-k then top-p on rows where most logits are -inf (allowed masks) still draws a finite token
    masked = torch.full((3, 6), float("-inf"))
    masked[:, 2] = 1.0
    assert sample_next(masked, top_k=3, top_p=0.3, generator=g).tolist() == [2, 2, 2]


def test_top_p_filter_still_samples():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    drawn = set(sample_next(logits, top_p=0.9, generator=g).tolist())
    assert drawn == {2, 3, 4}  # p = .63, .23, .09 of the top three reach 0.9 only with the third


@pytest.mark.parametrize("kwargs, match", [
    ({"top_p": 1.5}, "top_p must be <= 1"),
    ({"top_p": float("nan")}, "top_p"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k must be >= 0"),
])
def test_bad_settings_are_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        sample_next(torch.zeros(1, 4), **kwargs)
