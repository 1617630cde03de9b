"""One optimizer step's forward and backward for a contrastive loss, with negatives across the whole batch.

With several micro-batches (gradient accumulation), summing per-micro-batch losses would only contrast
products within a micro-batch. Feature-cache accumulation (GradCache, Gao et al. 2021; open_clip's
accum-freq) keeps the large-batch loss on small memory:

1. encode every micro-batch without a graph and cache the embeddings;
2. compute the loss on all cached embeddings (gathered across processes) and its gradient with respect to
   the cache;
3. re-encode each micro-batch with a graph and backpropagate the cached gradient into the weights.

Each re-encoding replays the random state of its first pass, so dropout draws the same masks and the
result equals one big batch (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from clipita.training.distributed import gather_labels, gather_with_local_grad

LABEL_KEYS = ("category_ids", "path_ids")  # what the loss reads beside the embeddings


class RandomState:
    """The CPU (and current CUDA device's) generator state, restorable for a forward pass."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        devices = [self.device] if self.cuda else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield


def _encode(model, accelerator, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    with accelerator.autocast():
        out = model(**inputs)
    return out.category_embeds.float(), out.product_embeds.float(), out.logits_per_category


def _global_loss(unwrapped, accelerator, category_embeds, product_embeds, labels: dict) -> torch.Tensor:
    return unwrapped.contrastive_loss(
        gather_with_local_grad(category_embeds, accelerator),
        gather_with_local_grad(product_embeds, accelerator),
        **{key: gather_labels(value, accelerator) for key, value in labels.items()},
    )


def _labels(micro_batches: list[dict]) -> dict[str, torch.Tensor]:
    return {
        key: torch.cat([batch[key] for batch in micro_batches])
        for key in LABEL_KEYS
        if key in micro_batches[0]
    }


def contrastive_step(accelerator, model, micro_batches: list[dict]) -> torch.Tensor:
    """Accumulate into `.grad` the gradient of the contrastive loss over all micro-batches of all processes;
    return that loss (detached). Batches hold the processor's tensors and the `LABEL_KEYS`."""
    unwrapped = accelerator.unwrap_model(model)
    if len(micro_batches) == 1:
        batch = micro_batches[0]
        category_embeds, product_embeds, _ = _encode(model, accelerator, batch)
        loss = _global_loss(unwrapped, accelerator, category_embeds, product_embeds, _labels(micro_batches))
        accelerator.backward(loss)
        return loss.detach()

    # 1. cache embeddings, remembering each micro-batch's random state
    states, categories, products = [], [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(RandomState(accelerator.device))
            category_embeds, product_embeds, _ = _encode(model, accelerator, batch)
            categories.append(category_embeds)
            products.append(product_embeds)
    sizes = [c.shape[0] for c in categories]
    category_cache = torch.cat(categories).requires_grad_()
    product_cache = torch.cat(products).requires_grad_()
    labels = _labels(micro_batches)

    # 2. the loss over the whole (global) batch and its gradient w.r.t. the cache and the temperature
    loss = _global_loss(unwrapped, accelerator, category_cache, product_cache, labels)
    temperature = unwrapped.logit_scale
    inputs = [category_cache, product_cache] + ([temperature] if temperature.requires_grad else [])
    grads = torch.autograd.grad(loss, inputs)
    category_grads, product_grads = grads[0].split(sizes), grads[1].split(sizes)

    # 3. re-encode with a graph and push the cached gradients into the weights; DDP syncs on the last one
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with states[i].replayed():
                category_embeds, product_embeds, logits = _encode(model, accelerator, batch)
            surrogate = (category_embeds * category_grads[i]).sum() + (
                product_embeds * product_grads[i]
            ).sum()
            if temperature.requires_grad:
                # The forward used the temperature for its logits; a zero term lets DDP see it used.
                surrogate = surrogate + 0.0 * logits.sum()
            accelerator.backward(surrogate)
    if temperature.requires_grad:
        # Identical on every process (same global loss), so it is added after DDP's averaging.
        scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0
        temperature_grad = grads[2] * scale
        temperature.grad = (
            temperature_grad if temperature.grad is None else temperature.grad + temperature_grad
        )
    return loss.detach()
