"""Third-party serving stacks in the loop: serve a workload with one (``tqsim serve``) and map a plan's knobs to
its configuration (``tqsim plan --stack``). Importing this is cheap; each stack is imported only when used."""

from tqsim.serve.stacks import STACKS, require_stack, stack_config

__all__ = ["STACKS", "require_stack", "stack_config"]
