"""The unmodified pytorch-fid Inception network on random weights: the reference of tests/test_inception.py.

Run with the Python of an environment that has ``pytorch-fid`` (see ``.ci/pytorch_fid_env.sh``)::

    $NCSN_PYTORCH_FID_PYTHON tests/pytorch_fid_reference.py --out=DIR [--num_images=4 --size=32 --seed=0]

Writes

* ``DIR/pt_inception-random.pth``: random weights as a state dict in the layout of pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` (torchvision's ``Inception3`` with 1008 classes, no auxiliary
  head, the FID blocks), made so that every parameter matters: the BatchNorm running statistics are
  calibrated on random images (so activations stay O(1) through the ~100 layers) and then perturbed, the
  BatchNorm affine parameters and the fc bias are random;
* ``DIR/reference.npz``: ``images`` (N, size, size, 3) uint8 and pytorch-fid's outputs for them:
  ``pool3`` (N, 2048) from ``InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True,
  use_fid_inception=True)`` given ``images / 255`` in NCHW (what ``ToTensor`` gives it), and ``logits`` /
  ``logits_unbiased`` = ``fc(pool3)`` with / without the fc bias.

pytorch-fid is used as installed: its ``fid_inception_v3()`` downloads the weights through
``load_state_dict_from_url``; that one name is replaced by a function returning our state dict, everything
else (network construction, strict ``load_state_dict``, forward pass) is pytorch-fid's and torchvision's code.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pf_inception

# The modules of pytorch-fid's InceptionV3.blocks, by their names in the checkpoint (None: a pooling layer).
BLOCK_MODULE_NAMES = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c", None],
]


def build_fid_inception(state_dict: dict[str, torch.Tensor]) -> pf_inception.InceptionV3:
    """pytorch-fid's FID InceptionV3 (pool3 block), loading ``state_dict`` instead of downloading."""
    original = pf_inception.load_state_dict_from_url
    pf_inception.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    try:
        return pf_inception.InceptionV3(
            output_blocks=[3], resize_input=True, normalize_input=True, use_fid_inception=True
        )
    finally:
        pf_inception.load_state_dict_from_url = original


def checkpoint_state_dict(
    model: pf_inception.InceptionV3, fc: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The wrapper's parameters renamed to the checkpoint's keys (``blocks.2.0.x`` -> ``Mixed_5b.x``)."""
    state = {}
    for key, value in model.state_dict().items():
        _, block, index, rest = key.split(".", 3)
        name = BLOCK_MODULE_NAMES[int(block)][int(index)]
        state[f"{name}.{rest}"] = value.clone()
    state.update({key: value.clone() for key, value in fc.items()})
    return state


def random_checkpoint(seed: int, calibration_images: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    template = pf_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model = build_fid_inception(template.state_dict())
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Calibrate: running statistics = the statistics of one batch (momentum None: cumulative average).
    model.train()
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model(calibration_images)
        for bn in batch_norms:
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4))
            bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean) * bn.running_var.sqrt())
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    fc = {"fc.weight": template.fc.weight.detach(), "fc.bias": torch.randn(1008)}
    return checkpoint_state_dict(model, fc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, size=(args.num_images, args.size, args.size, 3), dtype=np.uint8)
    calibration = torch.rand(
        4, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1)
    )

    state_dict = random_checkpoint(args.seed, calibration)
    torch.save(state_dict, os.path.join(args.out, "pt_inception-random.pth"))

    model = build_fid_inception(state_dict).eval()  # pytorch-fid's strict load of the checkpoint
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # torchvision ToTensor
    with torch.no_grad():
        pool3 = model(x)[0].squeeze(-1).squeeze(-1)
        logits = F.linear(pool3, state_dict["fc.weight"], state_dict["fc.bias"])
        logits_unbiased = F.linear(pool3, state_dict["fc.weight"])
    np.savez(
        os.path.join(args.out, "reference.npz"),
        images=images,
        pool3=pool3.numpy(),
        logits=logits.numpy(),
        logits_unbiased=logits_unbiased.numpy(),
    )


if __name__ == "__main__":
    main()
