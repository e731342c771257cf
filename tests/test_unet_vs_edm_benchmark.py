"""benchmarks/unet_vs_edm.py runs end to end: with a stand-in for EDM's checkout (EDM's code is not shipped), whose
DhariwalUNet takes EDM's constructor and call signature."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = '''
from discodiff.networks.unet import UNet


class DhariwalUNet(UNet):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3, attn_resolutions=(32, 16, 8),
                 dropout=0.10, label_dropout=0):
        super().__init__(img_resolution, in_channels, out_channels=out_channels, num_classes=label_dim,
                         model_channels=model_channels, channel_mult=channel_mult, channel_mult_emb=channel_mult_emb,
                         num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        return super().forward(x, noise_labels, class_labels=class_labels)
'''


def test_the_benchmark_runs_against_an_edm_checkout(tmp_path, monkeypatch):
    (tmp_path / "edm" / "training").mkdir(parents=True)
    (tmp_path / "edm" / "training" / "networks.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "training", raising=False)
    monkeypatch.delitem(sys.modules, "training.networks", raising=False)
    from benchmarks.unet_vs_edm import main
    out = tmp_path / "r.json"
    main(["--edm-source", str(tmp_path / "edm"), "--resolution", "16", "--channels", "16", "--classes", "4",
          "--batch", "2", "--steps", "1", "--threads", "1", "--results", str(out)])
    report = json.loads(out.read_text())
    assert report["parameters"]["discodiff"] == report["parameters"]["edm"]  # the same blocks
    assert report["ratio"] > 0 and set(report["median_seconds"]) == {"discodiff", "edm"}
    assert report["converted_max_abs_diff"] is None  # 16 channels: EDM gives such blocks no attention heads
