"""The speed trials of the explanations page (engineering choices): what the stack offers for the CNNs' training and
inference on this machine's cores, measured on random inputs of the study's shape (64 mel bands, 173 frames).

    python docs/trials/speed_trials.py compile     # torch.compile against eager training steps
    python docs/trials/speed_trials.py inference   # clips/s of inference at several batch sizes, outputs compared

Each figure is the mean of 10 steps after a warm-up; the first compiled step includes the compile.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from urbansound_nb.models import build_model

N_MELS, N_FRAMES, TRAIN_BATCH = 64, 173, 32


def training_rate(name: str, compiled: bool) -> str:
    "Clips/s of training steps (forward, backward, AdamW) of a fresh channels-last `name`, eager or compiled."
    torch.manual_seed(0)
    model = build_model(name, n_classes=10, n_mels=N_MELS).to(memory_format=torch.channels_last).train()
    opt, forward = torch.optim.AdamW(model.parameters(), 1e-4), torch.compile(model) if compiled else model
    x, y = torch.randn(TRAIN_BATCH, N_MELS, N_FRAMES), torch.randint(0, 10, (TRAIN_BATCH,))

    def step():
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.time()
    step()
    first = time.time() - t
    step()
    t = time.time()
    for _ in range(10): step()
    rate = 10 * TRAIN_BATCH / (time.time() - t)
    return f"{name:10s} {'compiled' if compiled else 'eager':9s} first step {first:5.1f} s, {rate:5.0f} clips/s"


@torch.no_grad()
def inference_rates(name: str, clips: int = 512, batches=(128, 64, 32, 16)) -> list[str]:
    "Clips/s of a channels-last `name` in eval mode at each batch size, and the largest difference to the first."
    model = build_model(name, n_classes=10, n_mels=N_MELS).to(memory_format=torch.channels_last).eval()
    x, rows, first = torch.randn(clips, N_MELS, N_FRAMES), [], None
    for batch in batches:
        model(x[:batch])
        t = time.time()
        out = torch.cat([model(chunk) for chunk in x.split(batch)])
        first = out if first is None else first
        rows.append(f"{name:10s} batch {batch:4d}: {clips / (time.time() - t):6.0f} clips/s, "
                    f"largest difference {float((out - first).abs().max()):.1e}")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trial", choices=["compile", "inference"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("small_cnn", "resnet"):
        if args.trial == "compile": print(training_rate(name, False), training_rate(name, True), sep="\n")
        else: print(*inference_rates(name), sep="\n")
