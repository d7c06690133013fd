#!/usr/bin/env python3
"""configs/fast.ini's network and recipe in PyTorch (airbench94), for accuracy and speed against cfx.

The network of configs/fast.ini (widths a flag: 64,256,256 is fast.ini,
64,128,128 fast90.ini) trained as airbench94 trains it, in float32 on the CPU:
frozen 2x2 whitening conv, three conv-pool-BN-GELU-conv-BN-GELU groups with
dirac-initialised convolutions, global max-pool, linear head scaled by 1/9;
Nesterov SGD with BN biases at 64x the learning rate, label smoothing 0.2,
lookahead every 5 steps, alternating flip and +-2 px reflect translation,
6-view TTA for the test. Data: the CIFAR-10 binary files, a 45,000 / 5,000
split of the training set as cfx's. Run with Debian's python3-torch:

    /usr/bin/python3 tools/perf/torch_fast.py --data data/cifar10 --widths 64,128,128 --epochs 4

--schedule airbench (default) warms up from 0.2 to 1 over 23 % of the steps
and decays to 0.07, with the whitening bias frozen after 3 epochs (as
fast.ini's train_epochs=3); --schedule cfx is what
fast.ini configured before it took airbench's schedule (warm-up from 0 over
--warmup steps, decay to 0, the whitening bias always trained).
tools/perf/torch_step.py times one step.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def load(files):
    raw = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files]).reshape(-1, 3073)
    images = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()).float() / 255
    return (images - MEAN) / STD, torch.from_numpy(raw[:, 0].astype(np.int64))


def conv(c_in, c_out, k=3, padding=1, bias=False):
    layer = nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias)
    with torch.no_grad():
        nn.init.dirac_(layer.weight[:c_in])  # identity on the first c_in filters
    return layer


def batchnorm(c):
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad = False  # scale frozen at 1
    return bn


def group(c_in, c_out):
    return nn.Sequential(conv(c_in, c_out), nn.MaxPool2d(2), batchnorm(c_out), nn.GELU(),
                         conv(c_out, c_out), batchnorm(c_out), nn.GELU())


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def make_net(widths):
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    nn.init.zeros_(whiten.bias)
    whiten.weight.requires_grad = False
    return nn.Sequential(whiten, nn.GELU(), group(24, widths[0]), group(widths[0], widths[1]),
                         group(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(),
                         nn.Linear(widths[2], 10, bias=False), Scale(1 / 9))


def init_whitening(layer, images, eps=5e-4):
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
    cov = patches.T.double() @ patches.double() / len(patches)
    lam, vec = torch.linalg.eigh(cov)
    lam, vec = lam.flip(0), vec.T.flip(0)
    filt = (vec / torch.sqrt(lam + eps).unsqueeze(1)).float().reshape(-1, c, h, w)
    with torch.no_grad():
        layer.weight.copy_(torch.cat((filt, -filt)))


def translate(images, r, gen):
    """Each image shifted by (dy, dx) in [-r, r]^2 from its reflect-padded copy."""
    padded = F.pad(images, (r,) * 4, mode="reflect")
    shifts = torch.randint(0, 2 * r + 1, (len(images), 2), generator=gen)
    out = torch.empty_like(images)
    for sy in range(2 * r + 1):
        for sx in range(2 * r + 1):
            m = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[m] = padded[m, :, sy:sy + 32, sx:sx + 32]
    return out


def predict(net, images, tta, batch=500):
    net.eval()
    outs = []
    with torch.no_grad():
        for x in images.split(batch):
            mirror = lambda v: 0.5 * net(v) + 0.5 * net(v.flip(-1))
            if not tta:
                outs.append(net(x))
                continue
            p = F.pad(x, (1,) * 4, mode="reflect")
            shifted = 0.5 * (mirror(p[:, :, 0:32, 0:32]) + mirror(p[:, :, 2:34, 2:34]))
            outs.append(0.5 * mirror(x) + 0.5 * shifted)
    net.train()
    return torch.cat(outs)


def accuracy(net, images, labels, tta=False):
    return (predict(net, images, tta).argmax(1) == labels).float().mean().item()


def lr_factor(args, step, total):
    if args.schedule == "airbench":
        warm = int(0.23 * total)
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 - 0.93 * (step - warm) / (total - warm)
    if step < args.warmup:
        return (step + 1) / args.warmup
    span = total - args.warmup - 1
    return 1.0 - min(step - args.warmup, span) / span


def make_optimizer(net, args):
    norm_biases = [p for n, p in net.named_parameters() if p.requires_grad and p.dim() == 1
                   and isinstance(dict(net.named_modules())[n.rsplit(".", 1)[0]], nn.BatchNorm2d)]
    ids = {id(p) for p in norm_biases}
    other = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    # mean loss: lr and coupled decay as fast.ini's optim.lr and optim.weight_decay
    return torch.optim.SGD([dict(params=norm_biases, lr=args.lr * 64, weight_decay=args.wd / 64),
                            dict(params=other, lr=args.lr, weight_decay=args.wd)],
                           momentum=0.85, nesterov=True)


class Lookahead:
    def __init__(self, net):
        self.avg = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for k, v in net.state_dict().items():
            if v.dtype == torch.float32:
                self.avg[k].lerp_(v, 1 - decay)
                v.copy_(self.avg[k])


def train(args, net, tr_x, tr_y, va_x, va_y):
    gen = torch.Generator().manual_seed(args.seed)
    opt = make_optimizer(net, args)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
    steps_per_epoch = len(tr_x) // args.batch
    total = steps_per_epoch * args.epochs
    look, step = Lookahead(net), 0
    flipped = torch.where((torch.rand(len(tr_x), generator=gen) < 0.5).view(-1, 1, 1, 1),
                          tr_x.flip(-1), tr_x)
    for epoch in range(1, args.epochs + 1):
        if args.schedule == "airbench":
            net[0].bias.requires_grad = epoch <= 3
        t0, images = time.perf_counter(), translate(flipped, 2, gen)
        if epoch % 2 == 0:
            images = images.flip(-1)
        perm, correct, loss_sum = torch.randperm(len(images), generator=gen), 0, 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])
                g["lr"] = g["base_lr"] * lr_factor(args, step, total)
            out = net(images[idx])
            loss = loss_fn(out, tr_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 5 == 0:
                look.update(net, 0.95 ** 5 * (step / total) ** 3)
            if step == total:
                look.update(net, 1.0)
            correct += (out.argmax(1) == tr_y[idx]).sum().item()
            loss_sum += loss.item() * len(idx)
        dt, n = time.perf_counter() - t0, steps_per_epoch * args.batch
        print(f"epoch {epoch} train_loss {loss_sum / n:.4f} train_acc {correct / n:.4f} "
              f"val_acc {accuracy(net, va_x, va_y):.4f} images_per_second {n / dt:.1f} "
              f"seconds {dt:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--widths", default="64,256,256")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1.5)
    ap.add_argument("--wd", type=float, default=0.0013)
    ap.add_argument("--warmup", type=int, default=90, help="warm-up steps of --schedule cfx")
    ap.add_argument("--schedule", choices=("airbench", "cfx"), default="airbench")
    ap.add_argument("--train", type=int, default=45000, help="training images (rest: validation)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    widths = [int(w) for w in args.widths.split(",")]
    x, y = load([os.path.join(args.data, f"data_batch_{i}.bin") for i in range(1, 6)])
    net = make_net(widths)
    init_whitening(net[0], x[:5000])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    tr, va = perm[:args.train], perm[args.train:]
    t0 = time.perf_counter()
    train(args, net, x[tr], y[tr], x[va], y[va])
    te_x, te_y = load([os.path.join(args.data, "test_batch.bin")])
    print(f"validation {accuracy(net, x[va], y[va]):.4f} test {accuracy(net, te_x, te_y):.4f} "
          f"test_tta {accuracy(net, te_x, te_y, tta=True):.4f} wall {time.perf_counter() - t0:.0f} s",
          flush=True)


if __name__ == "__main__":
    main()
