"""peft's LoRA layer with use_dora=True (peft.tuners.lora.Linear with its DoraLinearVariant) around an nn.Linear whose
weight is W0, lora_A/lora_B weights A and B, magnitude m and scaling set to the contract's: its forward
base + (m/||V|| - 1)·base + (m/||V||)·scaling·lora_B(lora_A(x)), the norm detached."""
from llmopt.impls import register
from llmopt.impls.lora.peft_lora import lora_layer, use_tensor


def prepare(x, W0, A, B, m, *, scaling):
    layer = lora_layer(W0, A, B, scaling, use_dora=True)
    use_tensor(layer.lora_magnitude_vector["default"], "weight", m)
    return (lambda: layer(x)), (lambda out: out)


def unsupported(case) -> str | None:
    """peft builds no DoRA layer of rank 0 (a magnitude-only adapter), and with its adapter disabled it would drop m.
    For x of shape (in,) its DoraLinearLayer.forward views the magnitude scale as (1, out) and returns (1, out), where
    nn.Linear and the contract give (out,) (peft 0.21.0)."""
    if case.rank == 0:
        return "peft needs rank >= 1"
    if len(case.batch) == 0:
        return "peft's DoRA returns (1, out) for x of shape (in,): its magnitude scale is viewed (1, out)"
    return None


@register("dora", "peft_dora", kind="library", devices=("cpu", "cuda"), requires=("peft",), prepare=prepare,
          supports={"check": unsupported})
def peft_dora(x, W0, A, B, m, *, scaling):
    run, _ = prepare(x, W0, A, B, m, scaling=scaling)
    return run()
