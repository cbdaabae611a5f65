"""Which modules are BatchNorms (and what stays after folding them): a small, extensible registry.

Built in: every ``torch.nn`` BatchNorm (``_BatchNorm`` covers BatchNorm1d/2d/3d and initialised
lazy BN), ``SyncBatchNorm``. Recognised without registration, and *proven* on a random probe
input before use:

- subclasses that override ``forward`` (timm's ``BatchNormAct2d``): the module must compute
  ``children(BN(x))``, e.g. ``act(drop(BN(x)))``; the children are kept, the BN is folded;
- buffer-only modules named ``*BatchNorm*`` with ``weight``/``bias``/``running_mean``/
  ``running_var`` (torchvision's ``FrozenBatchNorm2d``).

Register your own with::

    from bnfold.torch import register_batchnorm
    register_batchnorm(MyNorm)                              # reads weight/bias/running_*/eps
    register_batchnorm(MyNormAct, remainder=lambda m: m.act)  # keep the activation
    register_batchnorm(Odd, params=lambda m: BNParams(...) or "reason it cannot fold")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bnfold.foldmath import bn_scale_shift, check_bn_params
from bnfold.keep import KEPT_REASON
from bnfold.torch.keep import is_kept

_PROBE_SHAPES = {1: [(5, 0), (3, 0, 4)], 2: [(2, 0, 3, 3)], 3: [(2, 0, 2, 3, 3)]}
_ANY_RANK = [(2, 0, 3, 3), (5, 0), (3, 0, 4), (2, 0, 2, 3, 3)]


@dataclasses.dataclass(frozen=True)
class BNParams:
    """Inference-time BN parameters as float64 numpy arrays, plus the module's dtype."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    dtype: torch.dtype

    @property
    def channels(self) -> int:
        return int(self.gamma.shape[0])

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) with BN(y) = s·y + t, float64."""
        return bn_scale_shift(self.gamma, self.beta, self.mean, self.var, self.eps)


ParamsFn = Callable[[nn.Module], "BNParams | str"]
RemainderFn = Callable[[nn.Module], "nn.Module | None"]


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
    """How to read a BN class's parameters and what module (if any) remains after folding."""

    cls: type[nn.Module]
    params: ParamsFn
    remainder: RemainderFn


@dataclasses.dataclass
class BNMatch:
    """A module recognised as BatchNorm: its parameters, remainder, or why it cannot fold."""

    module: nn.Module
    params: BNParams | None
    remainder: nn.Module | None
    reason: str | None = None

    @property
    def foldable(self) -> bool:
        return self.reason is None and self.params is not None


_REGISTRY: dict[type[nn.Module], BatchNormSpec] = {}


def read_bn_params(module: nn.Module) -> BNParams | str:
    """Read weight/bias/running_mean/running_var/eps; a str explains why it cannot fold."""
    if module.training:
        return "module is in training mode"
    if getattr(module, "track_running_stats", True) is False:
        return "track_running_stats=False: BN uses batch statistics even in eval mode"
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return "BN has no running statistics (batch statistics are used at inference)"
    if isinstance(mean, nn.parameter.UninitializedTensorMixin):
        return "lazy BatchNorm is not initialised: run the model once before folding"
    n = mean.numel()
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    gamma = _to_numpy(weight) if isinstance(weight, torch.Tensor) else np.ones(n)
    beta = _to_numpy(bias) if isinstance(bias, torch.Tensor) else np.zeros(n)
    eps = float(getattr(module, "eps", 1e-5))
    arrays = (gamma, beta, _to_numpy(mean), _to_numpy(var))
    reason = check_bn_params(*arrays, eps)
    if reason is not None:
        return reason
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else mean.dtype
    return BNParams(*arrays, eps=eps, dtype=dtype)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def register_batchnorm(
    cls: type[nn.Module],
    *,
    params: ParamsFn | None = None,
    remainder: RemainderFn | None = None,
) -> None:
    """Declare ``cls`` a BatchNorm: ``params(m)`` reads it, ``remainder(m)`` is what stays.

    ``remainder`` returns the module applied after the normalisation (an activation), or None.
    Subclasses of ``cls`` that do not override ``forward`` inherit the registration.
    """
    _REGISTRY[cls] = BatchNormSpec(cls, params or read_bn_params, remainder or (lambda m: None))


def unregister_batchnorm(cls: type[nn.Module]) -> None:
    """Forget a registration made with :func:`register_batchnorm`."""
    _REGISTRY.pop(cls, None)


def _registered_base(module: nn.Module) -> BatchNormSpec | None:
    for klass in type(module).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    return None


def is_batchnorm_like(module: nn.Module) -> bool:
    """Cheap test (no probe): registered, a registered subclass, or a duck-typed BN."""
    return _registered_base(module) is not None or _looks_like_frozen_bn(module)


def _looks_like_frozen_bn(module: nn.Module) -> bool:
    if "batchnorm" not in type(module).__name__.lower():
        return False
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    return (
        isinstance(mean, torch.Tensor)
        and isinstance(var, torch.Tensor)
        and mean.dim() == 1
        and var.shape == mean.shape
    )


def match_batchnorm(module: nn.Module) -> BNMatch | None:
    """Recognise ``module`` as BatchNorm and decide what folding it leaves behind.

    Returns None for modules that are not BatchNorm-like at all; a BN the user asked to
    keep matches with the reason "kept by request".
    """
    if is_kept(module):
        return BNMatch(module, None, None, KEPT_REASON) if is_batchnorm_like(module) else None
    spec = _registered_base(module)
    if spec is not None and _same_forward(module, spec.cls):
        params = spec.params(module)
        if isinstance(params, str):
            return BNMatch(module, None, None, params)
        return BNMatch(module, params, spec.remainder(module))
    if spec is None and not _looks_like_frozen_bn(module):
        return None
    params = (spec.params if spec else read_bn_params)(module)
    if isinstance(params, str):
        return BNMatch(module, None, None, params)
    remainder, reason = _probe_remainder(module, params)
    return BNMatch(module, params if reason is None else None, remainder, reason)


def _same_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    return type(module).forward is base.forward


def _probe_remainder(module: nn.Module, params: BNParams) -> tuple[nn.Module | None, str | None]:
    """Prove module(x) == R(s·x + t) for R = nothing or R = its children, on random inputs."""
    kept = [c for c in module.children() if not isinstance(c, nn.Identity)]
    candidates: list[nn.Module | None] = [None]
    if kept:
        candidates.append(kept[0] if len(kept) == 1 else nn.Sequential(*kept))
    name = type(module).__name__
    x = _probe_input(module, params)
    if x is None:
        return None, f"{name} could not be run on a probe input"
    s, t = params.scale_shift()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    ref_affine = x.double() * torch.from_numpy(s).view(shape) + torch.from_numpy(t).view(shape)
    with torch.no_grad():
        actual = module(x).double()
        for cand in candidates:
            expected = ref_affine if cand is None else cand(ref_affine.to(x.dtype)).double()
            if expected.shape == actual.shape and _close(actual, expected):
                return cand, None
    return None, (
        f"{name} is not a plain BatchNorm (nor BatchNorm followed by its child modules) on a "
        "probe input; register it with bnfold.torch.register_batchnorm"
    )


def _probe_input(module: nn.Module, params: BNParams) -> torch.Tensor | None:
    dims = next((d for d in (1, 2, 3) if f"{d}d" in type(module).__name__.lower()), None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, nn.SyncBatchNorm
    ):
        dims = next((d for d in (1, 2, 3) if isinstance(module, _BN_BY_DIM[d])), dims)
    shapes = _PROBE_SHAPES.get(dims, _ANY_RANK) if dims else _ANY_RANK
    gen = torch.Generator().manual_seed(0)
    device = _device_of(module)
    for shape in shapes:
        full = tuple(params.channels if d == 0 else d for d in shape)
        x = (torch.randn(full, generator=gen, dtype=torch.float64) * 2 + 0.5).to(
            device=device, dtype=params.dtype
        )
        try:
            with torch.no_grad():
                module(x)
        except Exception:  # wrong rank for this module: try the next shape
            continue
        return x
    return None


_BN_BY_DIM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.all((a - b).abs() <= 1e-4 * max(scale, 1.0)))


register_batchnorm(nn.modules.batchnorm._BatchNorm)
register_batchnorm(nn.SyncBatchNorm)
