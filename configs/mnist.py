"""Original NCSN on MNIST (Song & Ermon 2019): CondRefineNetDilated with ngf 64 on 28x28x1.

Same noise levels, optimiser and sampler as ``cifar10_ncsn.py``; no flips.
"""

from configs import cifar10_ncsn


def get_config():
    config = cifar10_ncsn.get_config()
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.num_channels = 1
    config.data.random_flip = False
    config.model.ngf = 64
    return config
