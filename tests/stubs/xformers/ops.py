"""``xformers.ops.fmha`` of the stand-in: its forward has no operator for any input."""

from types import SimpleNamespace


def memory_efficient_attention_forward(*args: object, **kwargs: object) -> object:
    raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n"
                              "     query       : shape=(1, 1, 1, 8) (torch.bfloat16)\n"
                              "`cutlassF-pt` is not supported because:\n    xFormers wasn't build with CUDA support")


fmha = SimpleNamespace(memory_efficient_attention_forward=memory_efficient_attention_forward)
