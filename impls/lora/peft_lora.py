"""peft's LoRA layer (peft.tuners.lora.Linear) around an nn.Linear whose weight is W, lora_A/lora_B weights A and B and
scaling set to the contract's: its forward base_layer(x) + lora_B(lora_A(dropout(x))) * scaling, dropout 0. Rank 0
(no adapter) runs the layer with its adapters disabled: peft's own base path."""
from llmopt.impls import register


def use_tensor(module, name, tensor):
    """Make `tensor` itself (not a copy in a new Parameter) the module's `name`, so autograd reaches the caller's
    tensor."""
    delattr(module, name)
    setattr(module, name, tensor)


def set_adapter(layer, A, B, scaling):
    """Give a peft LoRA layer the contract's A, B and scaling; rank 0 disables its adapters (peft's own base path)."""
    layer.scaling["default"] = scaling
    if A.shape[0] == 0:
        layer.enable_adapters(False)
    else:
        use_tensor(layer.lora_A["default"], "weight", A)
        use_tensor(layer.lora_B["default"], "weight", B)
    return layer


def lora_layer(W, A, B, scaling, **config):
    """A peft lora.Linear computing with W, A, B (its own parameters built on the meta device, then replaced)."""
    import torch
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    rank = max(A.shape[0], 1)
    base = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device="meta", dtype=W.dtype)
    layer = Linear(base, "default", config=LoraConfig(r=rank, lora_alpha=rank, **config), r=rank, lora_alpha=rank)
    use_tensor(base, "weight", W)
    return set_adapter(layer, A, B, scaling)


def prepare(x, W, A, B, *, scaling):
    layer = lora_layer(W, A, B, scaling)
    return (lambda: layer(x)), (lambda out: out)


@register("lora", "peft_lora", kind="library", devices=("cpu", "cuda"), requires=("peft",), prepare=prepare)
def peft_lora(x, W, A, B, *, scaling):
    run, _ = prepare(x, W, A, B, scaling=scaling)
    return run()
