"""normflows' Glow train step on a CUDA GPU (the GPU counterpart of ../shared/bench/normflows_glow.py).

    python benchmarks/normflows_gpu.py L K H B STEPS

Same architecture as the CPU reference (L levels of K GlowBlocks, hidden H, LU 1x1 conv, affine
coupling, batch B, 32×32×3, Adam); prints one JSON line. normflows and torch are not jaxflows
dependencies: benchmarks/gpu.sh runs this only where both import.
"""

import json
import sys
import time

import normflows as nf
import torch


def main() -> None:
    levels, steps, hidden, batch, iters = (int(a) for a in sys.argv[1:6])
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

    def step() -> float:
        optimizer.zero_grad()
        loss = model.forward_kld(x)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(3):
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
