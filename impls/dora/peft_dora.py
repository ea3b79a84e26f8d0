"""peft's LoRA layer with use_dora=True (peft.tuners.lora.Linear with its DoraLinearVariant) around an nn.Linear whose
weight is W0, lora_A/lora_B weights A and B, magnitude m and scaling set to the contract's: its forward
base + (m/||V|| - 1)·base + (m/||V||)·scaling·lora_B(lora_A(x)), the norm detached."""
from llmopt.impls import register
from llmopt.impls.lora.peft_lora import lora_layer, use_tensor


def prepare(x, W0, A, B, m, *, scaling):
    layer = lora_layer(W0, A, B, scaling, use_dora=True)
    use_tensor(layer.lora_magnitude_vector["default"], "weight", m)
    return (lambda: layer(x)), (lambda out: out)


# peft builds no DoRA layer of rank 0 (a magnitude-only adapter), and with its adapter disabled it would drop m.
@register("dora", "peft_dora", kind="library", devices=("cpu", "cuda"), requires=("peft",), prepare=prepare,
          supports={"check": lambda case: "peft needs rank >= 1" if case.rank == 0 else None})
def peft_dora(x, W0, A, B, m, *, scaling):
    run, _ = prepare(x, W0, A, B, m, scaling=scaling)
    return run()
