"""Throughput of the FID Inception feature extractor (images/s), on whatever devices JAX sees.

  python benchmarks/inception_throughput.py              # CPU: batch sizes 50 and 200 (~4 min on 2 cores)
  python benchmarks/inception_throughput.py --batch_sizes=200,500,1000 --batches=5 --repeats=3   # a GPU

Times :func:`ncsn_jax.evaluation.inception.feature_fn_from_params` end to end as the evaluation calls it:
uint8 CIFAR-size images on the host in, pool3 features and logits on the host out (resize to 299×299
included), split over all devices. Random weights (the speed does not depend on them). For each batch size:
the first call (compilation), then ``--repeats`` timed calls of ``--batches`` batches each; the table shows
the median. FLOPs per image come from XLA's cost analysis of the network. ``--out`` keeps one entry per
device kind and count (a GPU run adds its entry next to the CPU one).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, ".")

from ncsn_jax.evaluation import inception  # noqa: E402

flags.DEFINE_list("batch_sizes", ["50", "200"], "Inception batch sizes (multiples of the device count).")
flags.DEFINE_integer("image_size", 32, "Height and width of the input images (resized to 299 inside).")
flags.DEFINE_integer("batches", 1, "Batches per timed call (raise on a GPU).")
flags.DEFINE_integer("repeats", 1, "Timed calls per batch size (the median is reported; raise on a GPU).")
flags.DEFINE_string("out", "benchmarks/results/inception_throughput.json", "JSON file for the results.")
FLAGS = flags.FLAGS


def gflop_per_image(params) -> float | None:
    """XLA's FLOP count of the network for one 299×299 image (None where the backend has no estimate)."""
    x = jax.ShapeDtypeStruct((1, FLAGS.image_size, FLAGS.image_size, 3), jnp.uint8)
    try:
        cost = jax.jit(inception.forward).lower(params, x).cost_analysis()
    except Exception:  # pylint: disable=broad-except  (cost analysis is optional per backend)
        return None
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / 1e9 if cost and "flops" in cost else None


def benchmark(params, batch_size: int) -> dict[str, float]:
    fn = inception.feature_fn_from_params(params, batch_size=batch_size)
    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, (batch_size * FLAGS.batches, FLAGS.image_size, FLAGS.image_size, 3), np.uint8
    )
    start = time.perf_counter()
    fn(images[:batch_size])
    first_call_s = time.perf_counter() - start
    seconds = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        fn(images)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "batch_size": batch_size,
        "first_call_s": round(first_call_s, 2),
        "images_per_s": round(len(images) / median, 2),
        "ms_per_image": round(1000 * median / len(images), 2),
    }


def main(argv: list[str]) -> None:
    del argv
    params = jax.jit(inception.FIDInceptionV3().init)(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))["params"]
    gflop = gflop_per_image(params)
    device = jax.devices()[0]
    rows = [benchmark(params, int(b)) for b in FLAGS.batch_sizes]
    print(
        f"FID Inception feature throughput: {jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"{FLAGS.image_size}x{FLAGS.image_size} uint8 inputs, jax {jax.__version__}"
        + (f", {gflop:.2f} GFLOP/image" if gflop else "")
    )
    print("| batch | first call s | images/s | ms/image |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['batch_size']} | {row['first_call_s']} | {row['images_per_s']} | {row['ms_per_image']} |"
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "image_size": FLAGS.image_size,
        "batches": FLAGS.batches,
        "repeats": FLAGS.repeats,
        "gflop_per_image": gflop,
        "rows": rows,
    }
    entries = {}
    if os.path.exists(FLAGS.out):
        with open(FLAGS.out) as f:
            entries = json.load(f)
    entries[f"{jax.device_count()} x {device.device_kind}"] = result
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(entries, f, indent=2)
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
