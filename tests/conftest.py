"""Test-suite setup: Triton runs through its interpreter when there is no CUDA (set before triton is imported);
hypothesis is derandomized with no deadline, as in `llmopt verify`."""
from hypothesis import HealthCheck, settings

from llmopt.impls import enable_triton_interpreter_without_cuda

enable_triton_interpreter_without_cuda()
settings.register_profile("llmopt", derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("llmopt")
