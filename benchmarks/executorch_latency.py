"""ExecuTorch (XNNPACK) latency of one small CNN at three precisions, beside PyTorch eager.

    python benchmarks/executorch_latency.py [--repeats 100] [--threads 1]

Needs the executorch extra. The CNN is small_cnn with channels [32, 64, 64] on 3x32x32 inputs,
built three times: every layer 32-bit (the program runs float32), 8-bit (int8) and 4-bit (int8
too: XNNPACK has no narrower kernels). Each is timed by MeasuredProfile (batch 1, median of
--repeats runs after 10 warm-up runs) with backend executorch and with backend torch (float
kernels whatever the bits). Prints the latencies, the .pte size and the int8 layers.
"""

from __future__ import annotations

import argparse

import torch

from autocompress.compression.apply import build_compressed
from autocompress.hardware_profiles import MeasuredProfile
from autocompress.spaces import Candidate, build_model, conv_linear_layers
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [32, 64, 64], "kernels": [3, 3, 3], "strides": [1, 2, 1]}
INPUT_SHAPE = (3, 32, 32)
PRECISIONS = {"fp32": 32, "int8": 8, "w4a4": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    plain = build_model(Candidate("small_cnn", ARCH), num_classes=10, input_shape=INPUT_SHAPE)
    names = conv_linear_layers(plain)
    generator = torch.Generator().manual_seed(0)
    for label, bits in PRECISIONS.items():
        layers = {name: LayerChoice(bits, bits) for name in names}
        model = build_compressed(
            Candidate("small_cnn", ARCH, layers), num_classes=10, input_shape=INPUT_SHAPE
        )
        model.train()
        model(torch.randn(16, *INPUT_SHAPE, generator=generator))  # activation ranges
        model.eval()
        timed = {}
        for backend in ("executorch", "torch"):
            profile = MeasuredProfile(
                backend=backend, threads=args.threads, warmup=10, repeats=args.repeats
            )
            timed[backend] = profile.profile(model, input_shape=INPUT_SHAPE)
        details = timed["executorch"].details
        print(
            f"{label}: executorch {timed['executorch'].latency_ms:.3f} ms "
            f"({details['pte_bytes']:,} B .pte, int8 layers: {len(details['int8_layers'])} of "
            f"{len(details['layers'])}) | torch eager {timed['torch'].latency_ms:.3f} ms"
        )


if __name__ == "__main__":
    main()
