"""Test-suite setup: Triton runs through its interpreter when there is no CUDA (set before triton is imported);
hypothesis is derandomized with no deadline, as in `llmopt verify`; torch runs one CPU thread."""
import torch
from hypothesis import HealthCheck, settings
from llmopt.impls import enable_triton_interpreter_without_cuda

enable_triton_interpreter_without_cuda()
# The tests run many small CPU ops on 2 cores shared with other runs: a second intra-op thread only spins against them
# (the paged_attention and kv_cache tests: 20 s of CPU with one thread, 160 s with two under a load of 2-4).
torch.set_num_threads(1)
settings.register_profile("llmopt", derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("llmopt")
