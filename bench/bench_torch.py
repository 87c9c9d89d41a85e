"""PyTorch training throughput of DeepLab v3 (ResNet-50, output stride 16), for comparison.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python bench/bench_torch.py [--size 384] [--batch-size 4] [--steps 4]
        [--layouts nchw,channels_last] [--threads N] [--out FILE]

Builds torchvision's deeplabv3_resnet50 (aux_loss=False, 21 classes; 39,638,869 parameters)
in plain torch.nn, without torchvision, at the Keras project's output stride 16: layer4
dilated by 2 instead of strided, ASPP rates 6/12/18. Trains it with Adam (lr 1e-4) and cross
entropy (ignore_index=255) on random data, two warm-up steps and then `--steps` timed steps,
once per memory layout (NCHW, and channels_last, which is what oneDNN prefers), and reports
images/s on the same JSON footing as bench_train.py. Run it on an otherwise idle machine: torch's
OpenMP threads wait for each other at every op, so one thread that shares a core with another
busy process stalls them all (on 2 cores beside a running TensorFlow benchmark, a 64 px step
took 11 s with 2 threads and 0.4 s with 1).

For comparison only: not part of the test suite, and torch is not a project dependency (run
it with a separate virtual environment's python, as above). The network is torchvision's,
not a port of model.py: its head has one more 3x3 conv (256 -> 256) before the classifier,
its backbone is ResNet v1.5 (stride on the 3x3 conv) without conv biases, ASPP's dropout is 0.5
rather than 0.1, and the loss is plain cross entropy rather than train.py's cross entropy + dice.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from common import choices, emit  # common imports TensorFlow only inside machine(), which is not used here

from kit import runtime  # noqa: E402 (on the path through common; stdlib only)

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as err:
    print(f"error: PyTorch is not importable ({err}); create a venv with `python3 -m venv /tmp/torchvenv && "
          f"/tmp/torchvenv/bin/pip install torch==2.13.0 numpy` and run this script with /tmp/torchvenv/bin/python",
          file=sys.stderr)
    sys.exit(2)

NUM_CLASSES = 21
IGNORE = 255
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 x4, plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Backbone(nn.Module):
    """torchvision's resnet50 up to layer4, replace_stride_with_dilation=[False, False, True].

    (B, 3, H, W) -> (B, 2048, H/16, W/16).
    """

    def __init__(self):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2, dilate=True)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # As torchvision: a dilated stage trades its stride for dilation, but its first block
        # keeps the previous stage's dilation (1 here); only the blocks after it use rate 2.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    """A bias-free conv ("same" padding), batch norm and ReLU, as a list to splice into a Sequential."""
    return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ASPPPooling(nn.Sequential):
    """Image pooling: global average -> 1x1 conv + BN + ReLU -> bilinear back to (h, w)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout))

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """A 1x1 branch, three 3x3 atrous branches and image pooling, concatenated and projected."""

    def __init__(self, cin: int, rates=(6, 12, 18), cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(*conv_bn_relu(cin, cout))]
                                   + [nn.Sequential(*conv_bn_relu(cin, cout, 3, r)) for r in rates]
                                   + [ASPPPooling(cin, cout)])
        self.project = nn.Sequential(*conv_bn_relu(len(self.convs) * cout, cout), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """ResNet-50 (output stride 16) + DeepLabHead; (B, 3, H, W) -> logits (B, classes, H, W)."""

    def __init__(self, num_classes: int = NUM_CLASSES, rates=(6, 12, 18)):
        super().__init__()
        self.backbone = ResNet50Backbone()
        # torchvision's DeepLabHead defaults to rates 12/24/36 (meant for output stride 8);
        # 6/12/18 match the Keras model at stride 16. Rates do not change the parameter count.
        self.classifier = nn.Sequential(ASPP(2048, rates), *conv_bn_relu(256, 256, 3),
                                        nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def machine() -> dict:
    """What the numbers were measured on (common.machine() would import TensorFlow)."""
    cpu = runtime.cpu_model()  # kit/runtime.py imports no TensorFlow
    # cpu_capability is the widest vector ISA torch's own kernels dispatch to (e.g. "AVX2", "AVX512").
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(), "python": platform.python_version()}


PRECISIONS = ("float32", "bfloat16")


def train_rate(layout: str, size: int, batch: int, steps: int, precision: str = "float32") -> float:
    """Training images/s of a fresh DeepLabV3 in `layout` on random data, after two warm-up steps.

    precision "bfloat16" is PyTorch's recipe for it: float32 weights and optimizer, the forward
    pass and loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (convs and matmuls in
    bfloat16, batch norm and the loss as autocast decides), backward outside it.
    """
    fmt = LAYOUTS[layout]
    torch.manual_seed(0)
    model = DeepLabV3().to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size))
    y[torch.rand(batch, size, size) < 0.05] = IGNORE  # some "void" pixels, as in VOC's borders

    autocast = precision == "bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384, help="square input size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per layout")
    p.add_argument("--layouts", default="nchw,channels_last", help=f"comma-separated, of {', '.join(LAYOUTS)}")
    p.add_argument("--precisions", default="float32", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    args.layouts = choices(p, "--layouts", args.layouts, LAYOUTS)
    args.precisions = choices(p, "--precisions", args.precisions, PRECISIONS)
    if args.batch_size < 2:
        # Training-mode batch norm after image pooling sees one value per channel at batch 1.
        p.error("--batch-size must be at least 2 (ASPP's image-pooling batch norm needs it in training)")
    return args


def main(args):
    torch.set_num_threads(args.threads)
    result = {"benchmark": "pytorch training throughput", "machine": machine(),
              "parameters": sum(p.numel() for p in DeepLabV3().parameters()),
              "size": args.size, "batch_size": args.batch_size, "runs": []}
    print(f"parameters: {result['parameters']:,}", file=sys.stderr, flush=True)
    for precision in args.precisions:
        for layout in args.layouts:
            rate = train_rate(layout, args.size, args.batch_size, args.steps, precision)
            run = {"precision": precision, "layout": layout, "images_per_s": round(rate, 3)}
            print(run, file=sys.stderr, flush=True)
            result["runs"].append(run)
    emit(result, args.out)


if __name__ == "__main__":
    main(parse_args())
