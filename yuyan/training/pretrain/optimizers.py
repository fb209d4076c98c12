"""The pretraining optimizers: AdamW (weight decay on matrices only), or Muon on the hidden matrices with AdamW on
the rest, held together as one optimizer (`CombinedOptimizer`); `CpuMuon` orthogonalises in float32 on CPUs
without native bfloat16."""

from __future__ import annotations

import math

import torch

from yuyan.loading import cpu_has_native_bfloat16
from yuyan.training.pretrain.arguments import PretrainArguments


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases and embeddings keep their scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "embed" in name or "norm" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, args: PretrainArguments) -> torch.optim.Optimizer:
    if args.optimizer == "muon":
        return make_muon_optimizer(model, args)
    groups = parameter_groups(model, args.weight_decay)
    betas = (args.adam_beta1, args.adam_beta2)
    # Fused AdamW runs on CPU and CUDA in current torch; foreach is the fallback.
    try:
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, foreach=True)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, seen as one: one learning-rate schedule (its factor applies to
    every group), one state dict for checkpoints, one `step`. The groups are the inner optimizers' own dicts, so a
    scheduler setting `group["lr"]` sets it where the inner optimizer reads it."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.defaults = {}
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]
        self.state = {}  # each inner optimizer keeps its own
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        self._zero_grad_profile_name = "Optimizer.zero_grad#CombinedOptimizer.zero_grad"

    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]


def newton_schulz_float32(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                          eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (torch.optim.Muon's coefficients and step count), in float32: the
    matrix whose singular values are pushed towards 1, with the singular vectors of `update`."""
    a, b, c = coefficients
    wide = update.size(0) <= update.size(1)
    x = update.float() if wide else update.float().T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def muon_learning_rate(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix rate: "original" sqrt(max(1, rows/cols)), "match_rms_adamw"
    0.2 * sqrt(max(rows, cols)) (updates of AdamW's RMS)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


if hasattr(torch.optim, "Muon"):

    class CpuMuon(torch.optim.Muon):
        """torch.optim.Muon whose orthogonalisation runs in float32 for parameters on a CPU without native bfloat16
        (torch's runs in bfloat16). An AVX2-only CPU emulates bf16 matmuls: there the small-hybrid's Muon step took
        19.6 s against 7.6 s for its forward and backward, and 0.9 s in float32. Where bf16 is native (AVX-512 BF16,
        AMX) torch's own step is the faster one (0.16 s against 0.32 s on an AVX-512 BF16 CPU;
        bench/optimizer_step.py), and it runs. `float32` forces one path (None: decide by the CPU). Same
        hyperparameters, state and state dict either way; other devices use torch's step."""

        def __init__(self, params, *args, float32: bool | None = None, **kwargs):
            super().__init__(params, *args, **kwargs)
            self.float32 = not cpu_has_native_bfloat16() if float32 is None else float32

        @torch.no_grad()
        def step(self, closure=None):
            on_cpu = any(p.device.type == "cpu" for group in self.param_groups for p in group["params"])
            if not (on_cpu and self.float32):
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params, grads, buffers = [], [], []
                self._init_group(group, params, grads, buffers)
                momentum, lr = group["momentum"], float(group["lr"])
                for param, grad, buffer in zip(params, grads, buffers):
                    buffer.lerp_(grad, 1 - momentum)
                    update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                    update = newton_schulz_float32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update.to(param.dtype),
                               alpha=-muon_learning_rate(lr, group["adjust_lr_fn"], param.shape))
            return loss


def make_muon_optimizer(model: torch.nn.Module, args: PretrainArguments) -> CombinedOptimizer:
    """Muon on the 2-D weights inside the stack (attention, MLP, LSTM matrices), AdamW on the rest: embeddings and
    LM head (lookups and a classifier, which Muon's orthogonalised updates do not suit), norms and biases. Muon's
    `match_rms_adamw` scaling gives its updates AdamW's size, so both share the learning rate and its schedule."""
    hidden, rest = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_hidden = parameter.ndim == 2 and "embed" not in name and "lm_head" not in name
        (hidden if is_hidden else rest).append((name, parameter))
    hidden_ids = {id(p) for _, p in hidden}
    groups = [
        {**group, "params": [p for p in group["params"] if id(p) not in hidden_ids]}
        for group in parameter_groups(model, args.weight_decay)
    ]
    groups = [group for group in groups if group["params"]]
    adamw = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), foreach=True)
    muon = CpuMuon([p for _, p in hidden], lr=args.learning_rate, weight_decay=args.weight_decay,
                   adjust_lr_fn="match_rms_adamw")
    return CombinedOptimizer([adamw, muon])


__all__ = ["CombinedOptimizer", "make_optimizer", "newton_schulz_float32", "parameter_groups"]
