"""train-prior on the run's device, and the encoder's streamed pass over the data."""
import pytest
import torch
from conftest import TINY_TOY_ARGS

from discodiff.cli import main
from discodiff.data import ArrayDataset
from discodiff.runs import Run
from discodiff.train.prior import encode_streamed

TOY = ["--preset", "toy2d", *TINY_TOY_ARGS[:-1], "--set", "train.batch=64", "--set", "train.tick_kimg=0.128",
       "--quiet"]


class Loaded(Exception):
    pass


def test_train_prior_loads_the_model_on_the_chosen_device(tmp_path, monkeypatch, capsys):
    run = tmp_path / "toy"
    try:
        main(["train", "--run-dir", str(run), "--kimg", "0.128", *TOY])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    seen = []

    def load_model(self, device="cpu"):
        seen.append(str(device))
        raise Loaded

    monkeypatch.setattr(Run, "load_model", load_model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine: the default is cuda
    for args in ([], ["--device", "cpu"]):
        with pytest.raises(Loaded):
            main(["train-prior", "--run-dir", str(run), *args])  # (Loaded is none of the errors main reports)
    assert seen == ["cuda", "cpu"]


def test_encode_streamed_equals_encoding_the_whole_set(tmp_path, capsys):
    from discodiff.config import preset_config
    from discodiff.model import DiscoDiff

    cfg = preset_config("digits", {"model": {"network": {"model_channels": 8, "channels_per_head": 8,
                                                         "latent_dim": 16, "latent_heads": 2, "latent_depth": 1},
                                             "encoder": {"width": 16, "heads": 2, "depth": 1}}})
    cfg.model.data_shape, cfg.model.num_classes = [1, 8, 8], 0
    torch.manual_seed(0)
    model = DiscoDiff(cfg.model).eval()
    pixels = torch.randint(0, 256, (37, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    data = ArrayDataset(pixels=pixels)
    whole = model.encode_all(data.x)
    assert torch.allclose(encode_streamed(model, data, "cpu", batch=10), whole, atol=1e-6)
