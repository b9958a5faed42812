import math

import pytest
import torch

from qcli import metrics


def test_sqnr_hand_computed():
    # signal power 4, noise power 0.04 -> 10*log10(100) = 20 dB
    ref = torch.tensor([[2.0, 0.0]])
    test = torch.tensor([[2.2, 0.0]])
    assert metrics.sqnr_db(*metrics.power_sums(ref, test)) == pytest.approx(20.0)


def test_sqnr_degenerate_cases():
    assert metrics.sqnr_db(5.0, 0.0) == math.inf
    assert metrics.sqnr_db(0.0, 0.0) == math.inf
    assert metrics.sqnr_db(0.0, 1.0) == -math.inf


def test_cosine_per_sample_including_zero_vectors():
    ref = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    test = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    assert metrics.cosine_per_sample(ref, test).tolist() == pytest.approx([0.0, 1.0, 0.0, 1.0])


def test_topk_and_agreement():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    labels = torch.tensor([2, 0])
    assert metrics.topk_hits(logits, labels, 1) == 1
    assert metrics.topk_hits(logits, labels, 2) == 2
    assert metrics.topk_hits(logits, labels, 5) == 2  # k capped at the class count
    assert metrics.top1_agreement_hits(logits, logits.flip(0)) == 0
    assert metrics.top1_agreement_hits(logits, logits * 2) == 2


def test_percentile_matches_numpy_linear():
    import numpy as np

    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 10, 50, 90, 100):
        assert metrics.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        metrics.percentile([], 50)
