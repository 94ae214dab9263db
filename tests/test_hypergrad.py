"""Hypergradients against closed-form answers (quadratic inner problems) and independent computations."""
import pytest
import torch

from meltr_ray.core import hypergrad
from meltr_ray.core.hypergrad import hypergradient, select_scope
from meltr_ray.core.meltr import MELTR

from toy_models import ToyMultiTask, toy_batches



@pytest.fixture(autouse=True)
def float64():
    """Closed-form comparisons in float64; restored afterwards so other test modules keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class Quadratic:
    """L_inner(w, φ) = ½ wᵀAw − wᵀBφ,  L_outer(w) = ½‖w − c‖².

    H = A, ∇_φ⟨∇_w L_inner, p⟩ = −Bᵀp, w*(φ) = A⁻¹Bφ, so the exact hypergradient is
    dL_outer/dφ = Bᵀ A⁻¹ g with g = w − c, and the K-term series is Bᵀ Σ_{j≤K} (I − αA)^j g.
    """

    def __init__(self, eigenvalues, m=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        self.A = q @ torch.diag(torch.tensor(eigenvalues)) @ q.T
        self.B = torch.linalg.qr(torch.randn(n, n, generator=g))[0][:, :m]   # orthonormal columns
        self.c = torch.randn(n, generator=g)
        self.w = torch.nn.Parameter(torch.randn(n, generator=g))
        self.phi = torch.nn.Parameter(torch.randn(m, generator=g))

    def inner(self):
        return 0.5 * self.w @ self.A @ self.w - self.w @ self.B @ self.phi

    def outer(self):
        return 0.5 * (self.w - self.c).pow(2).sum()

    def g(self):
        return (self.w - self.c).detach()

    def exact(self):
        return self.B.T @ torch.linalg.solve(self.A, self.g())

    def series(self, steps, lr):
        v, p = self.g(), self.g()
        for _ in range(steps):
            v = v - lr * self.A @ v
            p = p + v
        return self.B.T @ p

    def hypergrad(self, **kw):
        return hypergradient(self.outer(), self.inner(), [self.w], [self.phi], **kw)[0]


def _grad(output, inputs, **kwargs):
    """Plain autograd.grad with zeros for unused inputs (the independent reference computation)."""
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


SPECTRA = {
    "uniform_1_2": [1.0, 1.2, 1.5, 1.7, 2.0, 1.1],
    "spread_0p5_10": [0.5, 1.0, 3.0, 6.0, 10.0, 2.0],
    "outlier": [1.0, 1.0, 1.0, 1.0, 1.0, 8.0],
    "repeated": [2.0, 2.0, 2.0, 0.8, 0.8, 0.8],
}


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
def test_inverse_convention_converges_to_the_implicit_function_theorem(spectrum):
    q = Quadratic(SPECTRA[spectrum])
    lr = 1.9 / max(SPECTRA[spectrum])          # 0 < α < 2/λ_max
    exact = q.exact()
    errors = []
    for k in [0, 1, 2, 3, 5, 10, 20, 50, 100, 200]:
        approx = q.hypergrad(neumann_steps=k, neumann_lr=lr, convention="inverse")
        errors.append(((approx - exact).norm() / exact.norm()).item())
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors


@pytest.mark.parametrize("steps", [0, 1, 3, 7])
def test_series_convention_equals_the_closed_form_series(steps):
    q = Quadratic(SPECTRA["spread_0p5_10"])
    torch.testing.assert_close(q.hypergrad(neumann_steps=steps, neumann_lr=0.05), q.series(steps, 0.05))


def test_inverse_is_alpha_times_series():
    q = Quadratic(SPECTRA["uniform_1_2"])
    series = q.hypergrad(neumann_steps=4, neumann_lr=0.3, convention="series")
    inverse = q.hypergrad(neumann_steps=4, neumann_lr=0.3, convention="inverse")
    torch.testing.assert_close(inverse, 0.3 * series)


def _meltr_problem(seed=0, dropout=0.0, start="official"):
    """The official start by default: these tests compare against the official formula and need every φ to
    have a mixed path at step one (the MTL start's W_o = 0 gives only W_o a first hypergradient; test_meltr)."""
    torch.manual_seed(seed)
    model = ToyMultiTask(depth=2)
    meltr = MELTR.from_preset("meltr_tiny", num_tasks=3, dropout=dropout, start=start)
    train, meta = toy_batches(2, seed=seed)
    losses = model(train)
    inner = meltr(torch.stack([losses[t] for t in model.task_names]))
    outer = model(meta, tasks=["primary"])["primary"]
    return model, meltr, inner, outer


def test_k0_series_is_the_official_formula_and_computes_no_hvp(monkeypatch):
    model, meltr, inner, outer = _meltr_problem()
    params, phi = list(model.parameters()), list(meltr.parameters())
    # The official MELTRgrad, computed independently: −∂/∂φ ⟨∇_w L_inner, stopgrad(∇_w L_outer)⟩.
    a = _grad(outer, params, retain_graph=True)
    t = _grad(inner, params, create_graph=True)
    used = [i for i, x in enumerate(t) if x.requires_grad]
    official = _grad([t[i] for i in used], phi, grad_outputs=[a[i] for i in used], retain_graph=True)
    official = [-o for o in official]

    calls = []
    monkeypatch.setattr(hypergrad._ExactProducts, "hvp", lambda self, v: calls.append(1) or v)
    ours = hypergradient(outer, inner, params, phi, neumann_steps=0, neumann_lr=None)
    assert calls == []
    for o, r in zip(ours, official):
        torch.testing.assert_close(o, r)
    assert any(o.abs().sum() > 0 for o in ours)


def test_include_direct_reaches_parameters_without_a_mixed_path():
    """norm2.bias shifts every token equally: it changes MELTR's output but not ∂MELTR/∂ℓ, so only the
    direct term ∂L_outer/∂φ (through the regulariser) gives it a hypergradient."""
    model, meltr, _, _ = _meltr_problem()
    train, meta = toy_batches(2, seed=5)

    def losses():
        vector = torch.stack([v for v in model(train).values()])
        inner = meltr(vector)
        outer = model(meta, tasks=["primary"])["primary"] + 0.5 * (vector.sum() - inner).abs()
        return outer, inner

    names = [n for n, _ in meltr.named_parameters()]
    index = names.index("encoder.0.norm2.bias")
    params, phi = list(model.parameters()), list(meltr.parameters())
    without = hypergradient(*losses(), params, phi, neumann_steps=1, neumann_lr=0.1)
    with_direct = hypergradient(*losses(), params, phi, neumann_steps=1, neumann_lr=0.1, include_direct=True)
    outer, _ = losses()
    assert torch.all(without[index] == 0)
    assert with_direct[index].abs().sum() > 0
    # and the direct term is exactly ∂L_outer/∂φ
    direct = _grad(outer, phi, retain_graph=True)
    torch.testing.assert_close(with_direct[index] - without[index], direct[index])


def _flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def _relative_error(a, b):
    return ((_flat(a) - _flat(b)).norm() / _flat(b).norm()).item()


def _both_methods(outer_fn, inner_fn, params, phi, seed=7, **kw):
    """(exact, finite-difference) hypergradients, each from the same RNG state, so L_inner draws the same
    dropout masks in both (the FD path replays that stream for every evaluation)."""
    results = []
    for method in ("neumann", "finite_difference"):
        torch.manual_seed(seed)
        outer = outer_fn()
        inner = inner_fn() if method == "neumann" else inner_fn
        results.append(hypergradient(outer, inner, params, phi, method=method, **kw))
    return results


def _toy_problem(toy_dropout=0.0, meltr_dropout=0.0):
    torch.manual_seed(0)
    model = ToyMultiTask(depth=2, dropout=toy_dropout)
    meltr = MELTR.from_preset("meltr_tiny", num_tasks=3, dropout=meltr_dropout, start="official")
    train, meta = toy_batches(2, seed=1)

    def inner():
        losses = model(train)
        return meltr(torch.stack([losses[t] for t in model.task_names]))

    def outer():
        return model(meta, tasks=["primary"])["primary"]
    return model.train(), meltr.train(), inner, outer


def test_finite_difference_matches_exact_products():
    model, meltr, inner, outer = _toy_problem()
    params, phi = list(model.parameters()), list(meltr.parameters())
    for steps in (0, 2):
        exact, fd = _both_methods(outer, inner, params, phi, neumann_steps=steps, neumann_lr=0.1, fd_radius=1e-3)
        assert _relative_error(fd, exact) < 1e-3
    # w is restored bit-exactly after the perturbations
    before = [p.detach().clone() for p in params]
    hypergradient(outer(), inner, params, phi, neumann_steps=1, neumann_lr=0.1, method="finite_difference")
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def _no_replay(monkeypatch):
    """The pre-fix behaviour: every evaluation of L_inner draws fresh dropout masks."""
    monkeypatch.setattr(hypergrad, "_ReplayedRandomness", lambda fn, *args, **kwargs: fn)


@pytest.mark.parametrize("replay", [True, False])
@pytest.mark.parametrize("toy_dropout, meltr_dropout", [(0.0, 0.1), (0.1, 0.0), (0.1, 0.1)])
@pytest.mark.parametrize("steps", [0, 2])
def test_finite_difference_replays_dropout(monkeypatch, replay, toy_dropout, meltr_dropout, steps):
    """Dropout on (backbone and/or MELTR, train mode): FD matches the exact products only because every
    evaluation replays one random stream (measured 2e-7 with it, 55–1e4 without)."""
    if not replay:
        _no_replay(monkeypatch)
    model, meltr, inner, outer = _toy_problem(toy_dropout, meltr_dropout)
    exact, fd = _both_methods(outer, inner, list(model.parameters()), list(meltr.parameters()),
                              neumann_steps=steps, neumann_lr=0.1, fd_radius=1e-3)
    error = _relative_error(fd, exact)
    assert (error < 1e-5) if replay else (error > 1.0), error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_finite_difference_replays_cuda_dropout():
    """On CUDA the dropout masks come from the device's generator: it is replayed too (not run on CPU CI)."""
    model, meltr, _, _ = _toy_problem(0.1, 0.1)
    model, meltr = model.cuda(), meltr.cuda()
    train, meta = ({k: v.cuda() for k, v in b.items()} for b in toy_batches(2, seed=1))

    def inner():
        losses = model(train)
        return meltr(torch.stack([losses[t] for t in model.task_names]))

    exact, fd = _both_methods(lambda: model(meta, tasks=["primary"])["primary"], inner, list(model.parameters()),
                              list(meltr.parameters()), neumann_steps=2, neumann_lr=0.1, fd_radius=1e-3)
    assert _relative_error(fd, exact) < 1e-5


def test_finite_difference_leaves_the_rng_where_one_evaluation_would():
    model, meltr, inner, outer = _toy_problem(0.1, 0.1)
    torch.manual_seed(3)
    outer(), inner()
    expected = torch.rand(4)
    torch.manual_seed(3)
    hypergradient(outer(), inner, list(model.parameters()), list(meltr.parameters()), neumann_steps=2,
                  neumann_lr=0.1, method="finite_difference")
    assert torch.equal(torch.rand(4), expected)


def test_finite_difference_replays_extra_generators():
    """A closure drawing its masks from a private generator (Violet's ``mask_generator``): ``generators=``."""
    model, meltr, _, outer = _toy_problem()
    private = torch.Generator().manual_seed(11)
    batch = toy_batches(1, seed=4)[0]

    def inner():
        keep = (torch.rand(batch["x"].shape, generator=private) > 0.3).to(batch["x"].dtype)
        losses = model({**batch, "x": batch["x"] * keep})
        return meltr(torch.stack([losses[t] for t in model.task_names]))

    params, phi = list(model.parameters()), list(meltr.parameters())
    errors = {}
    for replayed in ((private,), ()):
        state = private.get_state()
        exact = hypergradient(outer(), inner(), params, phi, neumann_steps=1, neumann_lr=0.1)
        private.set_state(state)
        fd = hypergradient(outer(), inner, params, phi, neumann_steps=1, neumann_lr=0.1,
                           method="finite_difference", fd_radius=1e-3, generators=replayed)
        errors[len(replayed)] = _relative_error(fd, exact)
    assert errors[1] < 1e-5 and errors[0] > 0.1, errors


@pytest.mark.parametrize("steps, lr", [(0, None), (1, 0.05), (3, 0.05), (3, 0.15)])
def test_info_reports_the_neumann_correction(steps, lr):
    """info["neumann_correction"] = ‖Σ_j v_j − (K+1)g‖ / ‖(K+1)g‖ against the closed form on a quadratic."""
    q = Quadratic(SPECTRA["spread_0p5_10"])
    info = {}
    q.hypergrad(neumann_steps=steps, neumann_lr=lr, info=info)
    g, v, p = q.g(), q.g(), q.g()
    for _ in range(steps):
        v = v - lr * q.A @ v
        p = p + v
    expected = ((p - (steps + 1) * g).norm() / ((steps + 1) * g).norm()).item()
    assert info["neumann_correction"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert info["outer_grad_norm"] == pytest.approx(g.norm().item())
    assert (info["neumann_correction"] == 0.0) == (steps == 0)


def test_k_is_only_a_rescale_at_the_backbone_learning_rate():
    """With α = 3e-5 (the backbone lr, the default Neumann step) (I − αH)^j ≈ I: the K = 3 hypergradient is
    4× the K = 0 one, same direction, and the reported correction says so; at α = 0.1 (λ_max(H) ≈ 6.4 for
    this toy, so αλ_max ≈ 0.64) it is not."""
    def run(steps, lr):
        model, meltr, inner, outer = _meltr_problem(start="mtl")
        info = {}
        grads = hypergradient(outer, inner, list(model.parameters()), list(meltr.parameters()),
                              neumann_steps=steps, neumann_lr=lr, info=info)
        return _flat(grads), info["neumann_correction"]

    base, _ = run(0, None)
    for lr, rescale in ((3e-5, True), (0.1, False)):
        grads, correction = run(3, lr)
        cosine = torch.nn.functional.cosine_similarity(grads, base, dim=0).item()
        ratio = (grads.norm() / base.norm()).item()
        if rescale:
            assert correction < 1e-3 and cosine > 1 - 1e-6 and ratio == pytest.approx(4.0, rel=1e-3)
        else:
            # p is 29 % off (K+1)g; the hypergradient's norm is 2.9×, not 4×, the K = 0 one (its direction
            # stays within cosine 0.999 on this toy: only W_o has a mixed path at the MTL start)
            assert correction > 0.1 and abs(ratio - 4.0) > 0.4, (correction, ratio)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_works_with_meltr_in_train_and_eval_mode(mode):
    model, meltr, _, outer = _meltr_problem(dropout=0.1)
    getattr(meltr, mode)()
    losses = model(toy_batches(1, seed=9)[0])
    inner = meltr(torch.stack([losses[t] for t in model.task_names]))
    result = hypergradient(outer, inner, list(model.parameters()), list(meltr.parameters()),
                           neumann_steps=2, neumann_lr=0.1)
    assert all(torch.isfinite(r).all() for r in result)
    assert sum(r.abs().sum() for r in result) > 0


def test_pytorch_fused_encoder_layer_in_eval_mode_works_under_the_math_backend():
    """A user-supplied combiner built on nn.TransformerEncoderLayer: the bilevel step runs the meta step with
    the math SDPA backend so double backward works in eval mode too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 16, batch_first=True, dropout=0.0).eval()
    emb = torch.nn.Linear(1, 16)
    model = ToyMultiTask()
    train, meta = toy_batches(2)
    with sdpa_kernel(SDPBackend.MATH):
        losses = model(train)
        vector = torch.stack([losses[t] for t in model.task_names])
        inner = layer(emb(vector.view(1, 3, 1))).mean()
        outer = model(meta, tasks=["primary"])["primary"]
        result = hypergradient(outer, inner, list(model.parameters()),
                               list(layer.parameters()) + list(emb.parameters()), neumann_steps=1,
                               neumann_lr=0.1)
    assert all(torch.isfinite(r).all() for r in result)


def test_scope_restricts_the_hypergradient_to_chosen_parameters():
    model, meltr, inner, outer = _meltr_problem()
    heads = select_scope(model, ["heads.*"])
    assert len(heads) == 6 and all(p.shape[-1] in (16, 1) for p in heads)
    phi = list(meltr.parameters())
    scoped = hypergradient(outer, inner, heads, phi, neumann_steps=2, neumann_lr=0.1)
    # Independent computation on the heads only (same problem rebuilt: the call above consumed the graph).
    model, meltr, inner, outer = _meltr_problem()
    heads, phi = select_scope(model, ["heads.*"]), list(meltr.parameters())
    g = _grad(outer, heads, retain_graph=True)
    t = _grad(inner, heads, create_graph=True)
    used = [i for i, x in enumerate(t) if x.requires_grad]
    v, p = list(g), list(g)
    for _ in range(2):
        hv = _grad([t[i] for i in used], [heads[i] for i in used], grad_outputs=[v[i] for i in used],
                   retain_graph=True)
        full_hv = [torch.zeros_like(x) for x in v]
        for i, h in zip(used, hv):
            full_hv[i] = h
        v = [a - 0.1 * b for a, b in zip(v, full_hv)]
        p = [a + b for a, b in zip(p, v)]
    expected = _grad([t[i] for i in used], phi, grad_outputs=[p[i] for i in used], retain_graph=True)
    for s, e in zip(scoped, expected):
        torch.testing.assert_close(s, -e)
    model2, meltr2, inner2, outer2 = _meltr_problem()
    full = hypergradient(outer2, inner2, list(model2.parameters()), list(meltr2.parameters()),
                         neumann_steps=2, neumann_lr=0.1)
    assert any(not torch.allclose(a, b) for a, b in zip(scoped, full))
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        select_scope(model, ["nothing.*"])


def test_unused_parameters_get_zeros_not_a_crash():
    model, meltr, inner, outer = _meltr_problem()
    unused = torch.nn.Parameter(torch.ones(3))
    extra_meta = torch.nn.Parameter(torch.ones(2))
    result = hypergradient(outer, inner, list(model.parameters()) + [unused],
                           list(meltr.parameters()) + [extra_meta], neumann_steps=2, neumann_lr=0.1)
    assert torch.all(result[-1] == 0)


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(neumann_steps=-1, neumann_lr=0.1), "neumann_steps must be an integer >= 0, got -1"),
    (dict(neumann_steps=2, neumann_lr=-0.1), "neumann_lr must be a finite number >= 0, got -0.1"),
    (dict(neumann_steps=2, neumann_lr=None), "neumann_lr must be given"),
    (dict(neumann_steps=1, neumann_lr=0.1, convention="exact"), "convention must be 'series' or 'inverse'"),
    (dict(neumann_steps=1, neumann_lr=0.1, method="cg"), "method must be 'neumann' or 'finite_difference'"),
    (dict(neumann_steps=1, neumann_lr=0.1, method="finite_difference"), "needs inner_loss as a callable"),
])
def test_bad_options_raise_value_error_naming_the_field(kwargs, message):
    q = Quadratic(SPECTRA["uniform_1_2"])
    with pytest.raises(ValueError, match=message):
        q.hypergrad(**kwargs)


def test_bad_losses_and_meta_params():
    q = Quadratic(SPECTRA["uniform_1_2"])
    with pytest.raises(ValueError, match=r"outer_loss must be a scalar tensor, got \(6,\)"):
        hypergradient(q.w * 2, q.inner(), [q.w], [q.phi], neumann_steps=0, neumann_lr=None)
    with pytest.raises(ValueError, match="inner_loss must be finite, got nan"):
        hypergradient(q.outer(), q.inner() * float("nan"), [q.w], [q.phi], neumann_steps=0, neumann_lr=None)
    frozen = torch.zeros(2)
    with pytest.raises(ValueError, match=r"meta_params\[1\] \(shape \(2,\)\) does not require grad"):
        hypergradient(q.outer(), q.inner(), [q.w], [q.phi, frozen], neumann_steps=0, neumann_lr=None)
