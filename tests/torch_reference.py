"""The reference architectures re-typed in PyTorch, a second implementation for the conversion tests.

Re-typed from ermongroup/ncsn ``models/cond_refinenet_dilated.py`` and ermongroup/ncsnv2
``models/{layers,normalization,ncsnv2}.py``: :func:`build_torch_reference` returns the torch modules
(InstanceNorm2dPlus, ConditionalInstanceNorm2dPlus, the RefineNet blocks and ``RefineNet`` itself for
``"ncsn"`` / ``"ncsnv2"`` / ``"ncsnv2_deepest"``), given the ``torch`` module so that importing this file
does not need PyTorch. Used by ``tests/test_convert.py`` and ``tests/test_convert_cli.py``.
"""

from __future__ import annotations

import types

import numpy as np


def build_torch_reference(torch):
    nn, F = torch.nn, torch.nn.functional
    from functools import partial

    def conv3x3(i, o, bias=True):
        return nn.Conv2d(i, o, 3, stride=1, padding=1, bias=bias)

    def dilated_conv3x3(i, o, dilation, bias=True):
        return nn.Conv2d(i, o, 3, padding=dilation, dilation=dilation, bias=bias)

    class InstanceNorm2dPlus(nn.Module):
        def __init__(self, c, bias=True):
            super().__init__()
            self.c = c
            self.instance_norm = nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
            self.alpha = nn.Parameter(torch.zeros(c).normal_(1, 0.02))
            self.gamma = nn.Parameter(torch.zeros(c).normal_(1, 0.02))
            self.beta = nn.Parameter(torch.zeros(c))

        def forward(self, x):
            means = torch.mean(x, dim=(2, 3))
            m = torch.mean(means, dim=-1, keepdim=True)
            v = torch.var(means, dim=-1, keepdim=True)
            means = (means - m) / torch.sqrt(v + 1e-5)
            h = self.instance_norm(x) + means[..., None, None] * self.alpha[..., None, None]
            return self.gamma.view(-1, self.c, 1, 1) * h + self.beta.view(-1, self.c, 1, 1)

    class ConditionalInstanceNorm2dPlus(nn.Module):
        def __init__(self, c, num_classes, bias=True):
            super().__init__()
            self.c = c
            self.instance_norm = nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
            self.embed = nn.Embedding(num_classes, 3 * c)
            self.embed.weight.data[:, : 2 * c].normal_(1, 0.02)
            self.embed.weight.data[:, 2 * c :].zero_()

        def forward(self, x, y):
            means = torch.mean(x, dim=(2, 3))
            m = torch.mean(means, dim=-1, keepdim=True)
            v = torch.var(means, dim=-1, keepdim=True)
            means = (means - m) / torch.sqrt(v + 1e-5)
            h = self.instance_norm(x)
            gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
            h = h + means[..., None, None] * alpha[..., None, None]
            return gamma.view(-1, self.c, 1, 1) * h + beta.view(-1, self.c, 1, 1)

    class ConvMeanPool(nn.Module):
        def __init__(self, i, o, kernel_size=3, biases=True, adjust_padding=False):
            super().__init__()
            conv = nn.Conv2d(i, o, kernel_size, stride=1, padding=kernel_size // 2, bias=biases)
            self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

        def forward(self, x):
            out = self.conv(x)
            return (
                sum([out[:, :, ::2, ::2], out[:, :, 1::2, ::2], out[:, :, ::2, 1::2], out[:, :, 1::2, 1::2]])
                / 4.0
            )

    class ResidualBlock(nn.Module):
        """ncsnv2 ResidualBlock; with num_classes, ncsn's ConditionalResidualBlock (norms take (x, y))."""

        def __init__(
            self,
            i,
            o,
            resample=None,
            normalization=None,
            adjust_padding=False,
            dilation=None,
            num_classes=None,
        ):
            super().__init__()
            self.act, self.i, self.o, self.resample = nn.ELU(), i, o, resample
            norm = (lambda c: normalization(c, num_classes)) if num_classes else normalization
            self.conditional = num_classes is not None
            if resample == "down":
                if dilation is not None:
                    self.conv1 = dilated_conv3x3(i, i, dilation)
                    self.normalize2 = norm(i)
                    self.conv2 = dilated_conv3x3(i, o, dilation)
                    shortcut = partial(dilated_conv3x3, dilation=dilation)
                else:
                    self.conv1 = conv3x3(i, i)
                    self.normalize2 = norm(i)
                    self.conv2 = ConvMeanPool(i, o, 3, adjust_padding=adjust_padding)
                    shortcut = partial(ConvMeanPool, kernel_size=1, adjust_padding=adjust_padding)
            else:
                if dilation is not None:
                    shortcut = partial(dilated_conv3x3, dilation=dilation)
                    self.conv1 = dilated_conv3x3(i, o, dilation)
                    self.normalize2 = norm(o)
                    self.conv2 = dilated_conv3x3(o, o, dilation)
                else:
                    shortcut = partial(nn.Conv2d, kernel_size=1)
                    self.conv1 = conv3x3(i, o)
                    self.normalize2 = norm(o)
                    self.conv2 = conv3x3(o, o)
            if o != i or resample is not None:
                self.shortcut = shortcut(i, o)
            self.normalize1 = norm(i)

        def _norm(self, layer, x, y):
            return layer(x, y) if self.conditional else layer(x)

        def forward(self, x, y=None):
            out = self.conv1(self.act(self._norm(self.normalize1, x, y)))
            out = self.conv2(self.act(self._norm(self.normalize2, out, y)))
            short = x if (self.o == self.i and self.resample is None) else self.shortcut(x)
            return short + out

    class RCUBlock(nn.Module):
        def __init__(self, c, n_blocks, n_stages, num_classes=None, normalizer=None):
            super().__init__()
            for i in range(n_blocks):
                for j in range(n_stages):
                    if num_classes:
                        setattr(self, f"{i + 1}_{j + 1}_norm", normalizer(c, num_classes))
                    setattr(self, f"{i + 1}_{j + 1}_conv", conv3x3(c, c, bias=False))
            self.n_blocks, self.n_stages, self.act, self.cond = (
                n_blocks,
                n_stages,
                nn.ELU(),
                bool(num_classes),
            )

        def forward(self, x, y=None):
            for i in range(self.n_blocks):
                residual = x
                for j in range(self.n_stages):
                    if self.cond:
                        x = getattr(self, f"{i + 1}_{j + 1}_norm")(x, y)
                    x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
                x = x + residual
            return x

    class CRPBlock(nn.Module):
        def __init__(self, c, n_stages, num_classes=None, normalizer=None):
            super().__init__()
            self.convs = nn.ModuleList([conv3x3(c, c, bias=False) for _ in range(n_stages)])
            self.cond = bool(num_classes)
            if self.cond:  # ncsn's CondCRPBlock: conditional norms and *average* pooling
                self.norms = nn.ModuleList([normalizer(c, num_classes) for _ in range(n_stages)])
                self.pool = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)
            else:
                self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
            self.act = nn.ELU()

        def forward(self, x, y=None):
            x = self.act(x)
            path = x
            for i, conv in enumerate(self.convs):
                if self.cond:
                    path = self.norms[i](path, y)
                path = conv(self.pool(path))
                x = path + x
            return x

    class MSFBlock(nn.Module):
        def __init__(self, in_planes, features, num_classes=None, normalizer=None):
            super().__init__()
            self.convs = nn.ModuleList([conv3x3(c, features, bias=True) for c in in_planes])
            self.cond = bool(num_classes)
            if self.cond:
                self.norms = nn.ModuleList([normalizer(c, num_classes) for c in in_planes])
            self.features = features

        def forward(self, xs, y, shape):
            sums = torch.zeros(xs[0].shape[0], self.features, *shape)
            for i, conv in enumerate(self.convs):
                h = self.norms[i](xs[i], y) if self.cond else xs[i]
                sums = sums + F.interpolate(conv(h), size=shape, mode="bilinear", align_corners=True)
            return sums

    class RefineBlock(nn.Module):
        def __init__(self, in_planes, features, start=False, end=False, num_classes=None, normalizer=None):
            super().__init__()
            cond = dict(num_classes=num_classes, normalizer=normalizer)
            self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, **cond) for c in in_planes])
            self.output_convs = RCUBlock(features, 3 if end else 1, 2, **cond)
            if not start:
                self.msf = MSFBlock(in_planes, features, **cond)
            self.crp = CRPBlock(features, 2, **cond)

        def forward(self, xs, y, output_shape):
            hs = [self.adapt_convs[i](x, y) for i, x in enumerate(xs)]
            h = self.msf(hs, y, output_shape) if len(xs) > 1 else hs[0]
            return self.output_convs(self.crp(h, y), y)

    class RefineNet(nn.Module):
        """NCSNv2 / NCSNv2Deeper / NCSNv2Deepest (unconditional, output / sigmas[y]) or CondRefineNetDilated
        (conditional). NCSNv2Deepest is NCSNv2Deeper with the extra stage res31 / refine31."""

        def __init__(self, kind, ngf, channels, image_size, sigmas):
            super().__init__()
            self.kind, self.ngf = kind, ngf
            self.register_buffer("sigmas", torch.tensor(sigmas))
            conditional = kind == "ncsn"
            num_classes = len(sigmas) if conditional else None
            if conditional:
                norm = ConditionalInstanceNorm2dPlus
                cond = dict(num_classes=num_classes, normalizer=norm)
                self.normalizer = norm(ngf, num_classes)
            else:
                norm, cond = InstanceNorm2dPlus, {}
                self.normalizer = norm(ngf)
            rb = lambda *a, **k: ResidualBlock(*a, normalization=norm, num_classes=num_classes, **k)
            self.begin_conv = nn.Conv2d(channels, ngf, 3, stride=1, padding=1)
            self.end_conv = nn.Conv2d(ngf, channels, 3, stride=1, padding=1)
            self.res1 = nn.ModuleList([rb(ngf, ngf), rb(ngf, ngf)])
            self.res2 = nn.ModuleList([rb(ngf, 2 * ngf, resample="down"), rb(2 * ngf, 2 * ngf)])
            self.deeper = kind in ("ncsnv2_deeper", "ncsnv2_deepest")
            if self.deeper:
                self.res3 = nn.ModuleList([rb(2 * ngf, 2 * ngf, resample="down"), rb(2 * ngf, 2 * ngf)])
                if kind == "ncsnv2_deepest":
                    self.res31 = nn.ModuleList([rb(2 * ngf, 2 * ngf, resample="down"), rb(2 * ngf, 2 * ngf)])
                self.res4 = nn.ModuleList(
                    [rb(2 * ngf, 4 * ngf, resample="down", dilation=2), rb(4 * ngf, 4 * ngf, dilation=2)]
                )
                self.res5 = nn.ModuleList(
                    [rb(4 * ngf, 4 * ngf, resample="down", dilation=4), rb(4 * ngf, 4 * ngf, dilation=4)]
                )
                self.refine1 = RefineBlock([4 * ngf], 4 * ngf, start=True)
                self.refine2 = RefineBlock([4 * ngf, 4 * ngf], 2 * ngf)
                if kind == "ncsnv2_deepest":
                    self.refine31 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
                self.refine3 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
                self.refine4 = RefineBlock([2 * ngf, 2 * ngf], ngf)
                self.refine5 = RefineBlock([ngf, ngf], ngf, end=True)
            else:
                self.res3 = nn.ModuleList(
                    [rb(2 * ngf, 2 * ngf, resample="down", dilation=2), rb(2 * ngf, 2 * ngf, dilation=2)]
                )
                self.res4 = nn.ModuleList(
                    [
                        rb(2 * ngf, 2 * ngf, resample="down", dilation=4, adjust_padding=image_size == 28),
                        rb(2 * ngf, 2 * ngf, dilation=4),
                    ]
                )
                self.refine1 = RefineBlock([2 * ngf], 2 * ngf, start=True, **cond)
                self.refine2 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf, **cond)
                self.refine3 = RefineBlock([2 * ngf, 2 * ngf], ngf, **cond)
                self.refine4 = RefineBlock([ngf, ngf], ngf, end=True, **cond)

        def forward(self, x, y):
            run = lambda blocks, h: blocks[1](blocks[0](h, y), y)
            h = self.begin_conv(2 * x - 1.0)
            l1 = run(self.res1, h)
            l2 = run(self.res2, l1)
            l3 = run(self.res3, l2)
            if self.deeper:
                deepest = self.kind == "ncsnv2_deepest"
                l31 = run(self.res31, l3) if deepest else l3
                l4 = run(self.res4, l31)
                l5 = run(self.res5, l4)
                r1 = self.refine1([l5], y, l5.shape[2:])
                r2 = self.refine2([l4, r1], y, l4.shape[2:])
                r31 = self.refine31([l31, r2], y, l31.shape[2:]) if deepest else r2
                r3 = self.refine3([l3, r31], y, l3.shape[2:])
                r4 = self.refine4([l2, r3], y, l2.shape[2:])
                out = self.refine5([l1, r4], y, l1.shape[2:])
            else:
                l4 = run(self.res4, l3)
                r1 = self.refine1([l4], y, l4.shape[2:])
                r2 = self.refine2([l3, r1], y, l3.shape[2:])
                r3 = self.refine3([l2, r2], y, l2.shape[2:])
                out = self.refine4([l1, r3], y, l1.shape[2:])
            if self.kind == "ncsn":
                return self.end_conv(F.elu(self.normalizer(out, y)))
            out = self.end_conv(F.elu(self.normalizer(out)))
            return out / self.sigmas[y].view(x.shape[0], 1, 1, 1)

    return types.SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})


def randomize_norm_parameters(torch, module):
    """Moves the normalisation parameters off their initial values (beta = 0, gamma ~ alpha ~ 1), so that
    a swapped gamma / alpha / beta would show."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("alpha", "gamma", "beta", "embed.weight")):
                p.copy_(p + 0.3 * torch.randn_like(p))


def nchw(x):
    return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))
