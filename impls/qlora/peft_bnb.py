"""peft's LoRA layer for bitsandbytes (peft.tuners.lora.bnb.Linear4bit) around a bitsandbytes Linear4bit holding the
contract's NF4 state (Params4bit of the packed bytes + its QuantState, compute dtype = x's): the QLoRA training stack.
In training mode, as in QLoRA (bitsandbytes' CPU inference mode would repack the weight and compute in bf16)."""
from llmopt.impls import register
from llmopt.impls.lora.peft_lora import set_adapter
from llmopt.impls.nf4.bnb import run_eagerly_on_cpu


def qlora_layer(state, A, B, scaling, dtype):
    import bitsandbytes as bnb
    from llmopt.impls.nf4._bnb_state import to_bitsandbytes
    from peft import LoraConfig
    from peft.tuners.lora.bnb import Linear4bit

    packed, quant_state = to_bitsandbytes(state)
    out_features, in_features = state.shape
    base = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype,
                             compress_statistics=state.double_quant, quant_type="nf4", device="meta")
    base.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=quant_state, blocksize=state.blocksize,
                                    compress_statistics=state.double_quant, quant_type="nf4", module=base,
                                    bnb_quantized=True)
    rank = max(A.shape[0], 1)
    layer = Linear4bit(base, "default", config=LoraConfig(r=rank, lora_alpha=rank), r=rank, lora_alpha=rank)
    return set_adapter(layer, A, B, scaling)


def prepare(x, state, A, B, *, scaling):
    layer = qlora_layer(state, A, B, scaling, x.dtype)

    def run():
        with run_eagerly_on_cpu(x.device):
            return layer(x)

    return run, lambda out: out


# bitsandbytes' CPU dequantization misplaces the absmax of blocks spanning two rows (see impls/nf4/bnb.py); its CPU
# double quantization is held to the contract through the state it is handed here (the reference's), so it applies.
@register("qlora", "peft_bnb", kind="library", devices=("cpu", "cuda"), requires=("peft", "bitsandbytes"),
          prepare=prepare, supports={"k_not_multiple_of_blocksize": ("cuda",)})
def peft_bnb(x, state, A, B, *, scaling):
    run, _ = prepare(x, state, A, B, scaling=scaling)
    return run()
