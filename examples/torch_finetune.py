"""Fine-tune ShuffleNet V2 x0.5 on a new 10-class task with a frozen backbone (PyTorch backend).

    python examples/torch_finetune.py                      # random "pretrained" weights
    python examples/torch_finetune.py weights.safetensors  # canonical weights, e.g. from `groupnets convert`

1. take 1000-class canonical weights (a file, or ``common.check.random`` standing in for ImageNet ones);
2. drop the tensors whose shapes cannot fit a 10-class model (the old classifier) and load the rest with
   ``strict=False`` — the report lists what was skipped;
3. ``freeze_backbone``: only ``fc`` trains, backbone BatchNorm stays in inference mode;
4. a few SGD steps on generated data (a stand-in for a real data loader);
5. check that only ``fc.*`` changed — weights *and* BatchNorm running statistics of the backbone are intact.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
import torch_impl

MODEL = "shufflenet_v2_x0_5"
NUM_CLASSES = 10


def source_weights(path: str | None) -> dict[str, np.ndarray]:
    if path is None:
        print(f"no weights file given: random canonical weights for {MODEL} (1000 classes)")
        return common.random_weights(common.get_spec(MODEL), seed=0)
    weights, metadata = common.load_weights(path)
    recorded = metadata.get("model")
    if recorded and recorded != MODEL:
        raise SystemExit(f"{path} holds weights for {recorded!r}, not {MODEL!r}")
    print(f"loaded {len(weights)} tensors from {path}")
    return weights


def short(keys, limit: int = 6) -> str:
    keys = list(keys)
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} [{', '.join(keys[:limit])}{more}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="?", help="canonical .safetensors file for shufflenet_v2_x0_5")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    parser.add_argument("--lr", type=float, help="default: 1 / mean squared norm of the pre-logits features")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    model = torch_impl.create_model(MODEL, num_classes=NUM_CLASSES)
    pretrained = source_weights(args.weights)
    expected = common.canonical_params(model.spec)
    # A 1000-way fc cannot go into a 10-way model: drop what does not fit (load_weights, like
    # load_state_dict, rejects wrong shapes even with strict=False), then load the rest non-strictly.
    dropped = [k for k, v in pretrained.items() if k in expected and np.shape(v) != expected[k].shape]
    report = torch_impl.load_weights(model, {k: v for k, v in pretrained.items() if k not in dropped},
                                     strict=False)
    print(f"dropped, shape does not fit {NUM_CLASSES} classes: {short(dropped)}")
    print(f"strict=False skipped: missing {short(report.missing_keys)}; unexpected {short(report.unexpected_keys)}")

    torch_impl.freeze_backbone(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable: {[n for n, p in model.named_parameters() if p.requires_grad]} "
          f"({sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,} values)")
    before = torch_impl.export_weights(model)

    # Generated data standing in for a DataLoader: one fixed batch, so the loss visibly falls.
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    lr = args.lr
    if lr is None:
        # Only the linear head trains, and its loss curvature scales with the features' squared norm (in
        # the thousands here, and varying with the backbone's weights): a step of 1/E‖f‖² stays stable.
        model.eval()
        with torch.no_grad():
            lr = 1.0 / float(model.forward_pre_logits(images).pow(2).sum(dim=1).mean())
        print(f"lr = 1 / E|features|^2 = {lr:.2e}")
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()  # backbone BatchNorm stays in eval mode: it is frozen
    for step in range(1, args.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")

    after = torch_impl.export_weights(model)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"], f"expected only fc.* to change, got {changed}"
    print(f"only {changed} changed; backbone weights and BatchNorm statistics untouched "
          f"({time.perf_counter() - start:.1f} s)")

    model.eval()
    with torch.no_grad():
        features = model.forward_pre_logits(images[:2])
    print(f"pre-logits features for reuse: {tuple(features.shape)}")


if __name__ == "__main__":
    main()
