"""bench-selective's models and metrics: each task is a model, its calibration batches and two scorers.

`eval_fn` is the reported metric, `search_fn` what the sweep and select score variants with, on data the
reported metric never sees (a validation split held out of training, views of the calibration photos,
unused calibration-pool sentences), so the reported loss is not biased by the search:

- digits CNN and a project ResNet, trained here on scikit-learn digits less `VALIDATION` images;
- EfficientNet-Lite0 (bundled weights), top-1 on ImageNet sample photos;
- all-MiniLM-L6-v2, embedding cosine with FP32 (retrieval agreement beside it).

Example:
    >>> from PIL import Image
    >>> [view.size for view in _views(Image.new("RGB", (10, 10)))]
    [(10, 10), (10, 10), (8, 8), (8, 8)]
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import quantpilot as qp

VALIDATION = 300


def _train_classifier(model: nn.Module, splits, epochs: int, seed: int = 0) -> nn.Module:
    """SGD with momentum and cosine decay on the digits training split (ResNet; the digits CNN has its own)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = epochs * ((len(splits.train_y) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(splits.train_y))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(splits.train_x[idx]), splits.train_y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def digits_task(kind: str, quick: bool) -> dict[str, Any]:
    """The digits CNN (`kind` "digits") or the project ResNet ("resnet"), trained, BatchNorm folded.

    Example:
        >>> callable(digits_task)
        True
    """
    from quantpilot_testbed.digits_cnn import DigitsSplits, accuracy, digits_splits, train_digits_cnn
    from quantpilot_testbed.resnet import ResNet

    splits = digits_splits(seed=0)
    # 300 training images are held back from training as the search's validation split: select never
    # scores variants on the test split the table reports (that would bias the reported accuracy up).
    val_x, val_y = splits.train_x[:VALIDATION], splits.train_y[:VALIDATION]
    train = DigitsSplits(splits.train_x[VALIDATION:], splits.train_y[VALIDATION:], splits.test_x, splits.test_y)
    epochs = 8 if quick else 30
    if kind == "digits":
        model = train_digits_cnn(train, epochs=epochs, seed=0)
    else:
        torch.manual_seed(0)  # the initial weights too: torch seeds each process at random
        model = _train_classifier(
            ResNet(in_channels=1, num_classes=10, widths=(16, 32), blocks_per_stage=1), train, epochs
        )
    return {
        "model": qp.fold_batchnorm(model),
        "calib": [train.train_x[i : i + 128] for i in range(0, 512, 128)],
        "eval_fn": lambda m: accuracy(m, splits.test_x, splits.test_y),
        "search_fn": lambda m: accuracy(m, val_x, val_y),
        "metric": f"accuracy on the {len(splits.test_y)} test images",
        "search_metric": f"accuracy on {VALIDATION} validation images held out of training",
        "example": splits.test_x,
        "top_k": None,
    }


def _views(image) -> list:
    """Views of a photo for the search: as is and mirrored (the central 80 %, zoomed in, and its mirror too
    with `--views 4`)."""
    from PIL import ImageOps

    w, h = image.size
    zoom = image.crop((round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h)))
    return [image, ImageOps.mirror(image), zoom, ImageOps.mirror(zoom)]


def efficientnet_task(quick: bool, views: int = 2) -> dict[str, Any]:
    """EfficientNet-Lite0: 100 sample photos calibrate (and, in `views` views, score the search), 400 report top-1.

    Example:
        >>> callable(efficientnet_task)
        True
    """
    from PIL import Image

    from quantpilot.models import load
    from quantpilot_testbed import imagenet_samples as samples

    model, prep = load("efficientnet-lite0")
    paths, labels = samples.load_samples()
    calibration, evaluation = samples.split_calibration(paths, labels, n_calibration=100)
    if quick:
        evaluation = samples.Subset(evaluation.paths[::8], evaluation.labels[::8])
    photos = [Image.open(p).convert("RGB") for p in calibration.paths]
    images = [prep(photo) for photo in photos]
    calib = [torch.cat(images[i : i + 25]) for i in range(0, len(images), 25)]
    # Decoded once: every evaluation then costs only the forward passes.
    held_out = torch.cat([prep(Image.open(p).convert("RGB")) for p in evaluation.paths])
    labels = torch.tensor(evaluation.labels)

    def top1(m, inputs, targets) -> float:
        with torch.no_grad():
            hits = sum(
                int((m(x).argmax(1) == y).sum()) for x, y in zip(inputs.split(50), targets.split(50), strict=True)
            )
        return hits / len(targets)

    # The search (sweep and select) scores variants by the task metric itself, top-1, on views of each
    # calibration photo (labels known; mirrored, zoomed): it never sees the 400 evaluation photos, so the
    # reported top-1 stays unbiased, and 2 views of 100 photos move the metric in 0.5 % steps where the photos
    # alone would move it in 1 % steps. (4 views halve the step again but double the cost of every search
    # evaluation: about 90 s of CPU each on this machine.)
    search_inputs = torch.cat([prep(view) for photo in photos for view in _views(photo)[:views]])
    search_labels = torch.tensor(calibration.labels).repeat_interleave(views)
    return {
        "model": qp.fold_batchnorm(model),
        "calib": calib,
        "eval_fn": lambda m: top1(m, held_out, labels),
        "search_fn": lambda m: top1(m, search_inputs, search_labels),
        "metric": f"top-1 on {len(evaluation.paths)} photos",
        "search_metric": f"top-1 on {views} views of each of the {len(images)} calibration photos",
        "example": torch.cat(images[:8]),
        "top_k": 4 if quick else 6,
    }


def minilm_task(quick: bool) -> dict[str, Any]:
    """all-MiniLM-L6-v2 scored by embedding cosine with FP32 on held-out sentences, batches sorted by length.

    Example:
        >>> callable(minilm_task)
        True
    """
    from quantpilot.models import load
    from quantpilot_testbed import datasets
    from quantpilot_testbed.sentence_embedding import embed, retrieval_agreement, token_batches

    model, tok = load("minilm")

    def by_length(sentences):
        # Batches of similar lengths carry little padding: about half the tokens of the unsorted order,
        # and padding positions no longer feed the activation statistics.
        return sorted(sentences, key=lambda s: len(tok(s)["input_ids"]))

    pool = datasets.sentences("calibration")
    n_calib = 64 if quick else 128
    calib = list(token_batches(tok, by_length(pool[:n_calib]), batch_size=32))
    held_out = by_length(datasets.sentences("eval")[: 64 if quick else 160])
    reference = embed(model, tok, held_out)
    # The search scores variants on calibration-pool sentences that calibration did not use (64, sorted):
    # the float reference embeddings are computed once, and the reported metrics stay on unseen sentences.
    search = by_length(pool[n_calib : n_calib + 64])
    search_reference = embed(model, tok, search)

    def eval_fn(m):
        return float((embed(m, tok, held_out) * reference).sum(-1).mean())

    def search_fn(m):
        return float((embed(m, tok, search) * search_reference).sum(-1).mean())

    def extra(m):
        return {"retrieval agreement": retrieval_agreement(reference, embed(m, tok, held_out))}

    example = next(token_batches(tok, datasets.sentences("eval")[:32], batch_size=32))

    def on_engine(runner):
        # An engine returns the first output (the hidden states); embed() reads it as the model's output.
        return lambda **batch: SimpleNamespace(last_hidden_state=runner.run(batch))

    return {
        "model": model,
        "calib": calib,
        "eval_fn": eval_fn,
        "search_fn": search_fn,
        "extra": extra,
        "on_engine": on_engine,
        "metric": f"embedding cosine vs FP32 on {len(held_out)} held-out sentences",
        "search_metric": f"embedding cosine vs FP32 on {len(search)} unused calibration-pool sentences",
        "example": dict(example),
        "top_k": 8 if quick else 12,
    }
