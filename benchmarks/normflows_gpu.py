"""normflows' Glow train step on a CUDA GPU (the GPU counterpart of ../shared/bench/normflows_glow.py).

    python benchmarks/normflows_gpu.py L K H B STEPS [--compile]

Same architecture as the CPU reference (L levels of K GlowBlocks, hidden H, LU 1x1 conv, affine
coupling, batch B, 32×32×3, Adam); prints one JSON line. `--compile` runs the loss through
`torch.compile` and reports the first step's time (its compilation) as compile_s. normflows and
torch are not jaxflows dependencies: benchmarks/gpu.sh runs this only where both import.
"""

import json
import sys
import time

import normflows as nf
import torch


def main() -> None:
    levels, steps, hidden, batch, iters = (int(a) for a in sys.argv[1:6])
    compiled = "--compile" in sys.argv[6:]
    torch.manual_seed(0)
    device = torch.device("cuda")
    channels, size = 3, 32
    q0, merges, flows = [], [], []
    for i in range(levels):
        blocks = [
            nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(steps)
        ]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            side = size // 2 ** (levels - i)
            shape = (channels * 2 ** (levels - i), side, side)
        else:
            side = size // 2**levels
            shape = (channels * 2 ** (levels + 1), side, side)
        q0.append(nf.distributions.DiagGaussian(shape))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, size, size, device=device)
    loss_fn = torch.compile(model.forward_kld) if compiled else model.forward_kld

    def step() -> float:
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        return loss.item()

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - start
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    print(
        json.dumps(
            {
                "library": "normflows",
                "mode": "torch.compile" if compiled else "eager",
                "compile_s": round(first_step_s, 2),
                "levels": levels,
                "steps": steps,
                "hidden": hidden,
                "batch": batch,
                "params": sum(p.numel() for p in model.parameters()),
                "step_ms": round(1000 * seconds, 3),
                "images_per_sec": round(batch / seconds, 2),
                "device_kind": torch.cuda.get_device_name(),
            }
        )
    )


if __name__ == "__main__":
    main()
