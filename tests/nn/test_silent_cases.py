"""What used to pass silently: negative token ids in packed tables, activations that were all zeros in calibration."""

import warnings

import pytest
import torch

import quantpilot as qp


def test_packed_embedding_refuses_out_of_range_ids_like_nn_embedding():
    table = qp.algorithms.quantize_embeddings(torch.nn.Sequential(torch.nn.Embedding(10, 8)), bits=8, group_size=None)
    with pytest.raises(IndexError):
        torch.nn.Embedding(10, 8)(torch.tensor([-1]))
    for bad in (torch.tensor([-1]), torch.tensor([3, 10])):
        with pytest.raises(IndexError, match="token ids must lie in 0..9"):
            table(bad)
    assert table(torch.tensor([0, 9])).shape == (2, 8)


def test_an_input_that_was_all_zeros_in_calibration_is_named_in_a_warning():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.fill_(-1.0)
        net[0].bias.fill_(-1.0)  # ReLU outputs zeros for positive inputs: the second layer sees only zeros
    qmodel = qp.quantize(net)
    with qp.calibrate(qmodel):
        qmodel(torch.rand(16, 4))
    with pytest.warns(UserWarning, match=r"'2.input_quantizer' saw only zeros"):
        qp.freeze(qmodel)
    healthy = qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with qp.calibrate(healthy):
        healthy(torch.randn(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qp.freeze(healthy)
