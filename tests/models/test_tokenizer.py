import torch

from dtune.models.tokenizer import ActionTokenizer


def test_round_trip_within_half_a_bin():
    tok = ActionTokenizer(64)
    x = torch.linspace(-1, 1, 1001)
    ids = tok.encode(x)
    assert ids.min() == 0 and ids.max() == 63
    assert (tok.decode(ids) - x).abs().max() <= 1 / 64 + 1e-6
    assert torch.equal(tok.encode(tok.decode(torch.arange(64))), torch.arange(64))


def test_out_of_range_is_clipped_and_pad_decodes_to_zero():
    tok = ActionTokenizer(64)
    assert tok.encode(torch.tensor([-5.0, 5.0])).tolist() == [0, 63]
    assert tok.decode(torch.tensor([tok.pad_token])).item() == 0.0
