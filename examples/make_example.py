"""Build examples/tiny_cnn.onnx: a small CNN whose BatchNorm and Dropout nodes survive export.

Run: python examples/make_example.py   (needs torch; the .onnx file is committed)

The legacy exporter with ``do_constant_folding=False`` keeps every BatchNormalization node
(parameters arrive through shared initializers), as many real exports do. Eval-mode export
drops Dropout, so we insert an inference-mode Dropout node before the classifier — the
form converters such as tf2onnx and paddle2onnx leave behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

OUT = Path(__file__).with_name("tiny_cnn.onnx")


def conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class TinyCNN(nn.Module):
    """A ResNet/MobileNet-flavoured classifier with BN after every conv and the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2)
        self.dw = conv_bn(16, 16, groups=16)
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(32, 24, 2, stride=2, groups=4), nn.BatchNorm2d(24)
        )
        self.fc = nn.Linear(24, 32)
        self.fc_bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        x = torch.relu(self.up(x)).mean((2, 3))
        return self.head(torch.relu(self.fc_bn(self.fc(x))))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def insert_inference_dropout(model: onnx.ModelProto, before_op: str = "Gemm") -> None:
    """Put ``Dropout(ratio=0.1)`` (opset-12+ form, no training_mode) before the first Gemm."""
    graph = model.graph
    idx, node = next((i, n) for i, n in enumerate(graph.node) if n.op_type == before_op)
    ratio = onnx.numpy_helper.from_array(np.array(0.1, dtype=np.float32), "dropout_ratio")
    graph.initializer.append(ratio)
    dropped = f"{node.input[0]}_dropout"
    dropout = onnx.helper.make_node(
        "Dropout", [node.input[0], "dropout_ratio"], [dropped], name="/dropout/Dropout"
    )
    node.input[0] = dropped
    graph.node.insert(idx, dropout)


def main() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    randomize_bn(model)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(
        model,
        (x,),
        str(OUT),
        dynamo=False,
        do_constant_folding=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    proto = onnx.load(str(OUT))
    insert_inference_dropout(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB)")


if __name__ == "__main__":
    main()
