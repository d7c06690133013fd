#!/usr/bin/env python3
"""Time the training step of a cfx recipe's network in PyTorch (tools/bench's comparison).

--net fast (configs/fast.ini), fast90 (configs/fast90.ini) or resnet18
(configs/resnet18.ini: torchvision's ResNet-18 with the CIFAR stem, a 3x3
stride-1 conv and no max-pool). One batch of training images, forward,
backward and the recipe's optimizer step, float32 on the CPU:

    /usr/bin/python3 tools/perf/torch_step.py --net fast --batch 1000 --threads 2 --steps 3

Prints images/s and ms per step after one warm-up step.
"""
import argparse
import os
import time

import torch
from torch import nn

import torch_fast


def resnet18():
    import torchvision
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--net", choices=("fast", "fast90", "resnet18"), default="fast")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x, y = torch_fast.load([os.path.join(args.data, "data_batch_1.bin")])
    x, y = x[:args.batch], y[:args.batch]
    if args.net == "resnet18":
        net = resnet18()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                              nesterov=True)
        loss_fn = nn.CrossEntropyLoss()
    else:
        net = torch_fast.make_net([64, 256, 256] if args.net == "fast" else [64, 128, 128])
        torch_fast.init_whitening(net[0], x)
        opt = torch_fast.make_optimizer(net, argparse.Namespace(lr=1.5, wd=0.0013))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)

    def step():
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t0) / args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.net}, batch "
          f"{args.batch}: {args.batch / dt:.1f} images/s, {dt * 1e3:.1f} ms per step", flush=True)


if __name__ == "__main__":
    main()
