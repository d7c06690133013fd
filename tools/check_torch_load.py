#!/usr/bin/python3
"""Loads a cfx checkpoint into the matching PyTorch model with
load_state_dict(strict=True) and compares test accuracy with cfx's.

    /usr/bin/python3 tools/check_torch_load.py RUN_DIR [--data DIR] [--limit N]

RUN_DIR is a cfx-train output directory; its checkpoints/best.h5 is loaded
into torchvision's resnet18 with the CIFAR stem when the keys are ResNet-18's,
otherwise into the seed CNN (nn.Sequential). The test images are normalised
as cfx does (ToTensor + Normalize with CIFAR-10's per-channel mean and std).
Prints PyTorch's test accuracy beside logs/metrics.h5's test_accuracy and
exits 1 if they differ by more than one image in 10,000 (float summation
order differs between the two). Needs python3-torch, -torchvision, -h5py.
"""
import argparse
import os
import sys

import h5py
import numpy as np
import torch

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def resnet18_cifar():
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def seed_cnn():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 10))


def test_images(data_dir, limit):
    raw = np.fromfile(os.path.join(data_dir, "test_batch.bin"), dtype=np.uint8)
    raw = raw.reshape(-1, 1 + 3 * 32 * 32)[:limit]
    labels = raw[:, 0].astype(np.int64)
    x = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    x = (x - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return torch.from_numpy(x), torch.from_numpy(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--limit", type=int, default=10000)
    args = ap.parse_args()
    ckpt = os.path.join(args.run_dir, "checkpoints", "best.h5")
    with h5py.File(ckpt, "r") as f:
        state = {k: torch.from_numpy(np.array(f["model"][k][()])) for k in f["model"]}
    model = resnet18_cifar() if "layer4.1.bn2.running_var" in state else seed_cnn()
    model.load_state_dict(state, strict=True)
    model.eval()
    x, y = test_images(args.data, args.limit)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 500):
            correct += (model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum().item()
    acc = correct / len(y)
    with h5py.File(os.path.join(args.run_dir, "logs", "metrics.h5"), "r") as f:
        cfx_acc = float(f.attrs["test_accuracy"])
    print("%s: %d tensors loaded strictly into %s; test accuracy PyTorch %.4f, cfx %.4f"
          % (ckpt, len(state), type(model).__name__, acc, cfx_acc))
    sys.exit(0 if abs(acc - cfx_acc) <= 1.5 / len(y) else 1)


if __name__ == "__main__":
    main()
