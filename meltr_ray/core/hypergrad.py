"""Hypergradients for MELTR's bilevel problem by approximate implicit differentiation (AID).

Notation: w = backbone parameters in scope, φ = MELTR parameters, L_inner(w, φ) = MELTR(ℓ(w); φ) on a training
batch, L_outer(w, φ) = ℓ_pri(w) on a meta batch + γ·|Σℓ − MELTR(ℓ)|, H = ∇²_w L_inner, α = ``neumann_lr``.

At an inner optimum the implicit function theorem gives

    dL_outer/dφ = ∂L_outer/∂φ − ∇²_{φw} L_inner · H⁻¹ · ∇_w L_outer.

H⁻¹ is approximated by the truncated Neumann series H⁻¹ ≈ α Σ_{j=0..K} (I − αH)^j (Lorraine et al. 2020):

    g   = ∇_w L_outer,  v₀ = g,  v_{j+1} = v_j − α·H v_j   (Hessian-vector products, never H itself)
    p   = Σ_{j=0..K} v_j
    implicit = −∇_φ ⟨∇_w L_inner, p⟩                       (one vector–Jacobian product)

Conventions (``convention=``):

* ``series`` — the result is ``implicit``: AuxiLearn's form, and at K = 0 exactly the official MELTR code
  (−∇_φ⟨∇_w L_inner, ∇_w L_outer⟩, the identity in place of H⁻¹).
* ``inverse`` — the result is ``α·implicit``, which converges to the exact IFT hypergradient as K → ∞ when
  0 < α < 2/λ_max(H).

``include_direct=True`` adds ∂L_outer/∂φ (non-zero because the regulariser depends on φ; the official code
drops it). With ``series`` the implicit term is not in the units of the direct one (it lacks the factor α), so
mixing them changes the balance; ``inverse`` + ``include_direct`` is the faithful IFT estimate.

Two choices, made separately (Betty's shape: small functions with one signature, in two registries):

* the inverse-Hessian approximation, :data:`INVERSE_APPROXIMATIONS` — ``neumann`` (the K-term series above)
  or ``identity`` (H⁻¹ ≈ I: K = 0 whatever ``neumann_steps`` says; no HVP); each is
  ``approx(products, g, steps, lr, reduce) -> p``;
* the product backend, :data:`PRODUCT_BACKENDS` — ``exact`` (HVPs and the mixed product by double backward)
  or ``finite_difference`` (central differences of first-order gradients, ε = R/‖p‖ — the fallback when
  double backward is unavailable or too costly; needs ``inner_loss`` as a closure that recomputes the loss at
  the current w); each is ``Backend(inner_loss, params, radius)`` with ``.hvp(v)`` and ``.mixed(v, φ)``.

``method=`` is the older single switch (``neumann`` = exact products, ``finite_difference``); it still works.

With ``finite_difference`` the closure's random
draws (dropout, a backbone's random masking) are *replayed*: every evaluation of one hypergradient starts from
the RNG state the first one saw (torch's CPU generator, the CUDA generators of the parameters' devices and any
``generators=`` given), so the ± differences see one fixed function of w — redrawing the masks between w + εu
and w − εu made the estimate noise (measured FD-vs-exact relative error 180 with MELTR's dropout 0.1). After
the call the generators stand where one evaluation left them. To compare with ``exact``, evaluate L_inner
for it from the same RNG state.

**When K is only a rescale.** v_j = (I − αH)^j g ≈ g whenever α·|λ|_max(H) ≪ 1, and then p ≈ (K+1)·g: the
K-term hypergradient is (K+1)× the K = 0 one, same direction, and Adam on φ cancels the scale — searching K
searches nothing. With α = the backbone's learning rate (3e-5, the paper's choice and our default) that is so
on every backbone measured: at K = 3 the correction ‖p − (K+1)g‖ / ‖(K+1)g‖ was 1e-4 on the toy backbone,
9e-6 on violet_tiny with its default meta scope and 8e-4 with every parameter in scope. It reaches ~10 % at
α ≈ 0.03 (toy), 0.1 (violet_tiny, default scope), 0.003 (violet_tiny, all), and the series grows without bound
once α·|λ|_max > 2 (|λ|_max ≈ 6.6, 13, 134 there; a negative curvature direction makes (I − αH)^j grow for
any α, as on violet_tiny at its random initialisation). ``info=`` reports the correction per hypergradient
(``info["neumann_correction"]``): near 0 means K is a rescale; raise ``meta.neumann_lr`` until it is not.

The result is the gradient to *descend* on, one tensor per meta parameter, zeros where there is no path.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Callable, Sequence

import torch

Tensors = list  # list[torch.Tensor | None]
Reduce = Callable[[list], list]


# ---- validation -----------------------------------------------------------------------------------------
def _check_scalar_loss(name: str, loss) -> None:
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"{name} must be a scalar tensor, got {shape}")
    if not torch.isfinite(loss.detach()).all():
        raise ValueError(f"{name} must be finite, got {loss.item()!r}")


def _check_options(neumann_steps, neumann_lr, convention, inverse, products, fd_radius) -> None:
    if isinstance(neumann_steps, bool) or not isinstance(neumann_steps, int) or neumann_steps < 0:
        raise ValueError(f"neumann_steps must be an integer >= 0, got {neumann_steps!r}")
    if convention not in ("series", "inverse"):
        raise ValueError(f"convention must be 'series' or 'inverse', got {convention!r}")
    if inverse not in INVERSE_APPROXIMATIONS:
        raise ValueError(f"inverse must be one of {sorted(INVERSE_APPROXIMATIONS)}, got {inverse!r}")
    if products not in PRODUCT_BACKENDS:
        raise ValueError(f"products must be one of {sorted(PRODUCT_BACKENDS)}, got {products!r}")
    needs_lr = (neumann_steps > 0 and inverse == "neumann") or convention == "inverse"
    if neumann_lr is None and needs_lr:
        raise ValueError("neumann_lr must be given when neumann_steps > 0 or convention='inverse'")
    if neumann_lr is not None and (not isinstance(neumann_lr, (int, float)) or not math.isfinite(neumann_lr)
                                   or neumann_lr < 0):
        raise ValueError(f"neumann_lr must be a finite number >= 0, got {neumann_lr!r}")
    if not fd_radius > 0:
        raise ValueError(f"fd_radius must be > 0, got {fd_radius!r}")


def _check_meta_params(meta_params: list) -> None:
    for i, param in enumerate(meta_params):
        if not param.requires_grad:
            raise ValueError(f"meta_params[{i}] (shape {tuple(param.shape)}) does not require grad")


# ---- small vector helpers on lists of tensors ---------------------------------------------------------
def _zeros_for_none(grads: Sequence, like: Sequence) -> Tensors:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def _dot(a: Sequence, b: Sequence) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(vectors: Sequence) -> float:
    """‖vectors‖ as one flat vector; one device sync (not one per tensor: a meta step calls this 3×)."""
    if not vectors:
        return 0.0
    return math.sqrt(float(torch.stack([v.detach().pow(2).sum().double() for v in vectors]).sum()))


def _grad(output, inputs: list, **kwargs) -> Tensors:
    """``autograd.grad`` that tolerates an empty input list and unused inputs (returns zeros)."""
    if not inputs:
        return []
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return _zeros_for_none(grads, inputs)


# ---- scope ----------------------------------------------------------------------------------------------
def select_scope(model: torch.nn.Module, scope="all") -> list:
    """Backbone parameters the hypergradient is taken with respect to.

    ``scope`` is ``"all"``, a list of fnmatch patterns over parameter names (``["head.*", "blocks.11.*"]``),
    or a callable ``name -> bool``. Only parameters that require grad are returned, in module order.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if scope == "all" or scope is None:
        return [p for _, p in named]
    if callable(scope):
        chosen = [p for n, p in named if scope(n)]
    else:
        patterns = [scope] if isinstance(scope, str) else list(scope)
        chosen = [p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(f"meta scope {scope!r} matches no trainable parameter of {type(model).__name__}")
    return chosen


# ---- the two ways of taking second-order products -----------------------------------------------------
class _ExactProducts:
    """HVPs and the mixed product by double backward through ∇_w L_inner (built once, create_graph=True)."""

    def __init__(self, inner_loss, params: list, radius: float = 0.0):
        inner_loss = inner_loss() if callable(inner_loss) else inner_loss
        grads = torch.autograd.grad(inner_loss, params, create_graph=True, allow_unused=True)
        # Parameters without a path to L_inner, or whose gradient does not depend on w or φ, contribute zeros.
        self.index = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.index]
        self.params = [params[i] for i in self.index]

    def hvp(self, vector: Tensors) -> Tensors:
        out = [torch.zeros_like(v) for v in vector]
        if self.grads:
            products = _grad(self.grads, self.params, grad_outputs=[vector[i] for i in self.index],
                             retain_graph=True)
            for i, hv in zip(self.index, products):
                out[i] = hv
        return out

    def mixed(self, vector: Tensors, meta_params: list) -> Tensors:
        """∇_φ ⟨∇_w L_inner, vector⟩."""
        if not self.grads:
            return [torch.zeros_like(m) for m in meta_params]
        return _grad(self.grads, meta_params, grad_outputs=[vector[i] for i in self.index])


class _FiniteDifferenceProducts:
    """The same products from first-order gradients at w ± εu (central differences, ε = R/‖u‖).

    ``inner_loss_fn`` must recompute L_inner at the current parameter values; w is restored bit-exactly.
    """

    def __init__(self, inner_loss_fn: Callable, params: list, radius: float):
        self.fn, self.params, self.radius = inner_loss_fn, params, radius

    def _at_offset(self, direction: Tensors, eps: float, wrt: list) -> Tensors:
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, d in zip(self.params, direction):
                    p.add_(d, alpha=eps)
            with torch.enable_grad():
                return [g.detach() for g in _grad(self.fn(), wrt)]
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def _central(self, direction: Tensors, wrt: list) -> Tensors:
        norm = _norm(direction)
        if norm == 0.0:
            return [torch.zeros_like(x) for x in wrt]
        eps = self.radius / norm
        plus = self._at_offset(direction, eps, wrt)
        minus = self._at_offset(direction, -eps, wrt)
        return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]

    def hvp(self, vector: Tensors) -> Tensors:
        return self._central(vector, self.params)

    def mixed(self, vector: Tensors, meta_params: list) -> Tensors:
        return self._central(vector, meta_params)


# ---- replaying the random stream of the inner loss (finite differences) -----------------------------------
class _ReplayedRandomness:
    """Calls ``fn`` so that every call draws the random numbers the first call drew.

    Captures torch's CPU generator, the CUDA generators of ``devices`` and ``generators`` on creation; every call
    after the first restores that state before ``fn`` and puts back the state the first call ended in
    afterwards, so to the caller the whole sequence looks like one evaluation.
    """

    def __init__(self, fn: Callable, devices=(), generators=()):
        self.fn, self.generators = fn, list(generators)
        self.cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                            for d in devices if d.type == "cuda"})
        self.start, self.end = self._state(), None

    def _state(self) -> tuple:
        return (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda],
                [g.get_state() for g in self.generators])

    def _restore(self, state: tuple) -> None:
        cpu, cuda, extra = state
        torch.set_rng_state(cpu)
        for device, value in zip(self.cuda, cuda):
            torch.cuda.set_rng_state(value, device)
        for generator, value in zip(self.generators, extra):
            generator.set_state(value)

    def __call__(self):
        if self.end is None:
            try:
                return self.fn()
            finally:
                self.end = self._state()
        self._restore(self.start)
        try:
            return self.fn()
        finally:
            self._restore(self.end)


# ---- the inverse-Hessian approximations (one signature) ---------------------------------------------------
def neumann_series(products, g: Tensors, steps: int, lr: float, reduce: Reduce | None = None) -> Tensors:
    """p = Σ_{j=0..K} v_j with v₀ = g, v_{j+1} = v_j − α·H v_j. K = 0 computes no HVP."""
    v = [x.detach() for x in g]
    p = [x.clone() for x in v]
    for _ in range(steps):
        hv = products.hvp(v)
        if reduce is not None:
            hv = reduce(hv)
        v = [vi - lr * hi.detach() for vi, hi in zip(v, hv)]
        p = [pi + vi for pi, vi in zip(p, v)]
    return p


def identity_inverse(products, g: Tensors, steps: int, lr: float, reduce: Reduce | None = None) -> Tensors:
    """p = g: H⁻¹ ≈ I (the official MELTR code; K = 0 whatever ``steps`` says). Computes no HVP."""
    return [x.detach() for x in g]


INVERSE_APPROXIMATIONS = {"identity": identity_inverse, "neumann": neumann_series}
PRODUCT_BACKENDS = {"exact": _ExactProducts, "finite_difference": _FiniteDifferenceProducts}
_LEGACY_METHODS = {"neumann": "exact", "finite_difference": "finite_difference"}


def neumann_correction(p: Tensors, g: Tensors, steps: int) -> float:
    """‖p − (K+1)g‖ / ‖(K+1)g‖: how far the K-term series is from a mere (K+1)× rescale of g (0 when g = 0)."""
    scaled = [(steps + 1) * x for x in g]
    size = _norm(scaled)
    return _norm([a - b for a, b in zip(p, scaled)]) / size if size > 0 else 0.0


# ---- the public function --------------------------------------------------------------------------------
def hypergradient(outer_loss, inner_loss, params, meta_params, *, neumann_steps: int = 3,
                  neumann_lr: float | None, convention: str = "series", include_direct: bool = False,
                  inverse: str = "neumann", products: str = "exact", method: str | None = None,
                  fd_radius: float = 1e-3, reduce: Reduce | None = None, generators: Sequence = (),
                  info: dict | None = None) -> tuple:
    """The hypergradient of ``outer_loss`` with respect to ``meta_params`` (see the module docstring).

    Args:
        outer_loss: scalar L_outer (depends on ``params``; on ``meta_params`` too when a regulariser is used).
        inner_loss: scalar L_inner, or a zero-argument callable returning it (required for
            ``method="finite_difference"``, which re-evaluates it at perturbed w).
        params: backbone parameters in scope (w).
        meta_params: MELTR parameters (φ); each must require grad.
        neumann_steps: K ≥ 0. K = 0 computes no Hessian-vector product.
        neumann_lr: α, the Neumann step (needed when K > 0 or ``convention="inverse"``).
        convention: ``series`` or ``inverse``.
        include_direct: add ∂L_outer/∂φ.
        inverse: ``neumann`` or ``identity`` (a key of :data:`INVERSE_APPROXIMATIONS`).
        products: ``exact`` (double backward) or ``finite_difference`` (a key of :data:`PRODUCT_BACKENDS`).
        method: legacy single switch: ``neumann`` (= exact products) or ``finite_difference``.
        fd_radius: R in ε = R/‖u‖ for finite differences.
        reduce: optional all-reduce (mean) applied to g and each HVP — the "global" distributed mode, in
            which every rank computes the hypergradient of the global batch.
        generators: extra ``torch.Generator`` s the ``inner_loss`` closure draws from (a backbone's private
            masking generator), replayed like the global ones for every evaluation.
        info: a dict to fill with diagnostics: ``neumann_correction`` (float, ‖p − (K+1)g‖ / ‖(K+1)g‖,
            0.0 at K = 0; see the module docstring) and ``outer_grad_norm`` (‖g‖).

    Returns:
        a tuple with one tensor per meta parameter: the gradient to descend on.
    """
    params, meta_params = list(params), list(meta_params)
    if method is not None:
        if method not in _LEGACY_METHODS:
            raise ValueError(f"method must be 'neumann' or 'finite_difference', got {method!r}")
        products = _LEGACY_METHODS[method]
    _check_options(neumann_steps, neumann_lr, convention, inverse, products, fd_radius)
    _check_meta_params(meta_params)
    _check_scalar_loss("outer_loss", outer_loss)
    if products == "finite_difference" and not callable(inner_loss):
        raise ValueError("products='finite_difference' (method='finite_difference') needs inner_loss as a "
                         "callable that recomputes the loss")
    if callable(inner_loss):
        inner_loss = _ReplayedRandomness(inner_loss, {p.device for p in params}, generators)
    inner_value = inner_loss() if callable(inner_loss) else inner_loss
    _check_scalar_loss("inner_loss", inner_value)

    wrt = params + (meta_params if include_direct else [])
    outer_grads = _grad(outer_loss, wrt, retain_graph=True)
    g = [x.detach() for x in outer_grads[:len(params)]]
    if reduce is not None:
        g = reduce(g)

    backend = PRODUCT_BACKENDS[products](inner_value if products == "exact" else inner_loss, params, fd_radius)
    p = INVERSE_APPROXIMATIONS[inverse](backend, g, neumann_steps, neumann_lr or 0.0, reduce)
    if info is not None:
        info["neumann_correction"] = neumann_correction(p, g, neumann_steps if inverse == "neumann" else 0)
        info["outer_grad_norm"] = _norm(g)
    scale = -(neumann_lr if convention == "inverse" else 1.0)
    result = [scale * m.detach() for m in backend.mixed(p, meta_params)]
    if include_direct:
        result = [r + d.detach() for r, d in zip(result, outer_grads[len(params):])]
    return tuple(result)
