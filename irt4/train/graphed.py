"""The trained network's forward and backward as CUDA graphs (partial-network capture).

A training step of the `small` UNet is ~28,000 small kernels, so the GPU waits on their launches.
`GraphedModule` replays the network's forward and its backward as two CUDA graphs
(torch.cuda.make_graphed_callables) and leaves the rest of the step eager: the loss, the optimizer
(fused AdamW) and the EMA are a handful of launches. PyTorch's constraints (CUDA semantics notes,
"CUDA Graphs", "Partial-network capture" and "Usage with torch.cuda.amp") and how they are met:

- a graph replays fixed shapes: one graph per input signature (shapes, dtypes, strides, device,
  requires_grad, autocast state), captured on the first call with it from clones of its inputs and
  replayed after; other calls (another signature past `max_graphs`, eval mode, no grad, keyword or
  non-tensor arguments, inputs off the device) run the module eagerly, logged once per reason;
- autocast runs with cache_enabled=False, when capturing and replaying (an error otherwise), and a
  graph is captured under the autocast state it is then called in (part of the signature);
- no host sync, host data or value-dependent control flow inside the network (tests/test_graphed.py
  checks the UNet's ops on the CPU); no hooks on the module or its submodules (they would run at
  capture only); no DistributedDataParallel (its gradient hooks are such hooks);
- the parameters stay the module's own, so the optimizer, the EMA and checkpoints see no change; the
  wrapper's state_dict is the module's. The warm-up iterations of a capture leave no trace: the
  buffers (BatchNorm statistics) and the random streams are restored afterwards.

Two things a caller must know. The outputs of a replay are views of the graph's memory, overwritten
by the next replay. So are the gradients the backward graph hands to autograd, and a parameter whose
`.grad` is None takes that view as its `.grad` (AccumulateGrad steals it): a second backward before
the optimizer step overwrites it and then adds itself, losing the first micro-batch's gradients, so
gradient accumulation over replays is wrong unless every `.grad` already exists (irt4.train.trainer
refuses the combination).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

MakeGraphed = Callable[..., Any]  # torch.cuda.make_graphed_callables' signature


class GraphedModule(nn.Module):
    """`module` with its training forward and backward replayed from CUDA graphs (module docstring).

    make_graphed: the capture function, torch.cuda.make_graphed_callables; tests pass a fake.
    device_type: the device the graphs run on (tests use "cpu" with a fake make_graphed).
    """

    def __init__(
        self,
        module: nn.Module,
        max_graphs: int = 2,
        make_graphed: MakeGraphed = torch.cuda.make_graphed_callables,
        device_type: str = "cuda",
    ):
        super().__init__()
        if isinstance(module, nn.parallel.DistributedDataParallel):
            raise ValueError(
                "CUDA graphs of a DistributedDataParallel module are not supported: its gradient hooks "
                "would run at capture only"
            )
        self.module = module
        self.max_graphs = max_graphs
        self.make_graphed = make_graphed
        self.device_type = device_type
        self.graphs: dict[tuple, Callable] = {}  # signature -> replaying forward
        self._eager_reasons: set[str] = set()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        signature, reason = self._signature(args, kwargs)
        if signature is not None:
            replay = self.graphs.get(signature)
            if replay is None and len(self.graphs) < self.max_graphs:
                replay = self.graphs[signature] = self._capture(args)
            if replay is not None:
                return replay(*args)
            reason = f"a new input signature after {len(self.graphs)} graphs (max_graphs)"
        self._report_eager(reason, args)
        return self.module(*args, **kwargs)

    def _signature(self, args: tuple, kwargs: dict) -> tuple[tuple | None, str]:
        """(the graph key of a call, "") or (None, why the call runs eagerly)."""
        if kwargs:
            return None, "keyword arguments"
        if not args or not all(isinstance(a, torch.Tensor) for a in args):
            return None, "an argument that is not a tensor"
        if not self.module.training:
            return None, "eval mode"
        if not torch.is_grad_enabled():
            return None, "gradients disabled"
        devices = {a.device for a in args}
        if len(devices) > 1 or args[0].device.type != self.device_type:
            return None, f"inputs on {sorted(map(str, devices))}, not one {self.device_type} device"
        autocast = torch.is_autocast_enabled(self.device_type)
        if autocast and torch.is_autocast_cache_enabled():
            raise RuntimeError(
                "CUDA graphs need torch.autocast(..., cache_enabled=False): with the cache, a graph "
                "reads the weight casts made before it, instead of casting the current weights"
            )
        tensors = tuple((a.shape, a.dtype, a.stride(), a.requires_grad) for a in args)
        autocast_dtype = torch.get_autocast_dtype(self.device_type) if autocast else None
        return (tensors, args[0].device, autocast_dtype), ""

    def _capture(self, args: tuple[torch.Tensor, ...]) -> Callable:
        hooked = [
            name or type(self.module).__name__
            for name, m in self.module.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        ]
        if hooked:
            raise RuntimeError(f"CUDA graphs need a module without hooks, found hooks on {hooked[:4]}")
        # the graph's own input buffers: the caller's tensors are freed or reused after the call
        sample_args = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        buffers = [b.detach().clone() for b in self.module.buffers()]
        devices = [args[0].device] if self.device_type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            graphed = self.make_graphed(self.module, sample_args, num_warmup_iters=3, allow_unused_input=True)
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), buffers):
                buffer.copy_(saved)
        log.info(
            "captured CUDA graphs of %s for inputs %s",
            type(self.module).__name__,
            ", ".join(str(tuple(a.shape)) for a in args),
        )
        if graphed is not self.module:
            return graphed
        # make_graphed_callables returns the module with its forward replaced by the graphed one:
        # take that forward out, so that the module stays plain for eager calls and other signatures
        return self.module.__dict__.pop("forward")

    def _report_eager(self, reason: str, args: tuple) -> None:
        if reason in self._eager_reasons:
            return
        self._eager_reasons.add(reason)
        shapes = ", ".join(
            str(tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args
        )
        log.info(
            "%s runs eagerly, not from a CUDA graph, for inputs %s: %s (logged once)",
            type(self.module).__name__,
            shapes,
            reason,
        )

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's own state dict (no "module." prefix): checkpoints do not change."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if assign:  # new parameter tensors: the graphs read the old ones
            self.graphs.clear()
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)
