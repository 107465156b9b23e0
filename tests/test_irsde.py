"""Numerical checks of every equation in irsde.py against an independent computation.

Numbers in comments refer to the paper's equations (restated in PAPER.md). Each test recomputes
the quantity another way: float64 re-derivation of the schedules, Monte Carlo simulation of the
SDE, quadrature of the variance integral, autograd of a Gaussian log-density, generic Gaussian
conditioning, and a Gaussian toy problem whose marginal score is known in closed form.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import irsde
from irsde import IRSDE

SETTINGS = settings(max_examples=15, deadline=None)
lams = st.floats(0.02, 0.5)
Ts = st.integers(5, 120)
epss = st.floats(0.001, 0.1)
schedules = st.sampled_from(["constant", "linear", "cosine"])


@st.composite
def sdes(draw, T=Ts):
    return IRSDE(draw(lams), draw(T), draw(schedules), draw(epss))


def reference_theta(name, T):
    """PAPER.md section 6 written out with explicit loops, in float64."""
    if name == "constant":
        return np.ones(T + 1)
    if name == "linear":
        s = 1000 / (T + 1)
        return np.array([0.0001 * s + (0.02 * s - 0.0001 * s) * i / T for i in range(T + 1)])
    n = T + 2
    a = [math.cos(((k / n) + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(n + 1)]
    return np.array([1 - a[i + 1] / a[0] for i in range(T + 1)])


# ---- 1. schedules (section 6) --------------------------------------------------------------

@SETTINGS
@given(sdes())
def test_schedule_matches_independent_derivation(sde):
    theta = reference_theta(sde.schedule, sde.T)
    np.testing.assert_allclose(sde.theta_rate.numpy(), theta, rtol=1e-12)
    Theta = np.concatenate([[0.0], np.cumsum(theta[1:])])
    dt = -math.log(sde.eps) / Theta[-1]
    np.testing.assert_allclose(sde.theta_bar.numpy(), Theta * dt, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sde.theta_prime.numpy(), theta * dt, rtol=1e-12)
    assert math.exp(-sde.theta_bar[-1].item()) == pytest.approx(sde.eps, rel=1e-12)
    assert np.all(np.diff(sde.theta_bar.numpy()) > 0)
    np.testing.assert_allclose((sde.sigma_rate**2 / sde.theta_rate).numpy(), 2 * sde.lam**2, rtol=1e-12)
    np.testing.assert_allclose(sde.v.numpy(), sde.lam**2 * (1 - np.exp(-2 * Theta * dt)), rtol=1e-12)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="/255"):
        IRSDE(lam=10)
    with pytest.raises(ValueError, match="schedule"):
        IRSDE(schedule="quadratic")
    with pytest.raises(ValueError, match="eps"):
        IRSDE(eps=0)
    with pytest.raises(ValueError, match="sampler"):
        irsde.sample(None, IRSDE(), torch.zeros(1, 1), sampler="no-such-sampler")


# ---- 2-4. forward marginals and transitions (Prop. 3.1, eqs. 4-6) ---------------------------

@settings(max_examples=6, deadline=None)
@given(sdes(T=st.integers(5, 30)), st.floats(-1, 1), st.floats(-1, 1), st.data())
def test_marginal_matches_monte_carlo_of_the_sde(sde, x0, mu, data):
    """Simulate eq. 3 by Euler-Maruyama with substeps of theta dz <= 1/400; compare with m_t, v_t (eq. 6).
    The substeps bound the scheme's own bias in the mean, |x0 - mu| theta_bar e^{-theta_bar} h / 2, by 5e-4 |x0 - mu|."""
    t = data.draw(st.integers(1, sde.T))
    rng, n = np.random.default_rng(0), 40_000
    x = np.full(n, x0)
    for i in range(1, t + 1):
        sub = max(40, math.ceil(400 * sde.theta_prime[i].item()))
        h = sde.theta_prime[i].item() / sub  # theta_z dz over one substep
        for _ in range(sub):
            x += h * (mu - x) + math.sqrt(2 * sde.lam**2 * h) * rng.standard_normal(n)
    m = sde.mean(torch.tensor([mu]), torch.tensor([x0]), t).item()
    v = sde.v[t].item()
    assert abs(x.mean() - m) < 5 * math.sqrt(v / n) + 1e-3 * abs(x0 - mu)
    assert x.var() == pytest.approx(v, rel=0.05)


@SETTINGS
@given(sdes(), st.data())
def test_transition_variance_equals_quadrature(sde, data):
    """v_{s:t} = integral_s^t sigma_z^2 e^{-2 theta_bar_{z:t}} dz with piecewise-constant theta (eq. 5)."""
    s = data.draw(st.integers(0, sde.T - 1))
    t = data.draw(st.integers(s + 1, sde.T))
    total = 0.0
    nodes, weights = np.polynomial.legendre.leggauss(20)
    for j in range(s + 1, t + 1):          # theta_z = theta_j dt on (j - 1, j]
        z = j - 0.5 + 0.5 * nodes
        rate = sde.theta_prime[j].item()    # d theta_bar / dz on this interval
        theta_bar_zt = sde.theta_bar[t].item() - sde.theta_bar[j].item() + rate * (j - z)
        total += 0.5 * np.sum(weights * 2 * sde.lam**2 * rate * np.exp(-2 * theta_bar_zt))
    _, var = sde.transition(torch.zeros(1), torch.zeros(1), t, s)
    assert total == pytest.approx(var, rel=1e-9)


@SETTINGS
@given(sdes(), st.floats(-1, 1), st.floats(-1, 1), st.data())
def test_chapman_kolmogorov(sde, x0, mu, data):
    """0 -> s -> t composed through eq. 5 equals 0 -> t (eq. 6)."""
    s = data.draw(st.integers(0, sde.T - 1))
    t = data.draw(st.integers(s + 1, sde.T))
    x0, mu = torch.tensor([x0], dtype=torch.float64), torch.tensor([mu], dtype=torch.float64)
    m_s, v_s = sde.transition(x0, mu, s, 0)
    m_t, v_st = sde.transition(m_s, mu, t, s)
    decay = math.exp(sde.theta_bar[s].item() - sde.theta_bar[t].item())
    assert m_t.item() == pytest.approx(sde.mean(mu, x0, t).item(), abs=1e-12)
    assert decay**2 * v_s + v_st == pytest.approx(sde.v[t].item(), rel=1e-10)


def test_q_sample_moments_and_forward_steps():
    """q_sample draws N(m_t, v_t); T forward Euler-Maruyama steps approach it as theta' shrinks."""
    sde, n = IRSDE(0.2, T=200, schedule="cosine", eps=0.01), 50_000
    x0, mu = torch.full((n, 1), 0.8, dtype=torch.float64), torch.full((n, 1), 0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    t = torch.full((n,), 75)
    x_t, noise = sde.q_sample(mu, x0, t, generator=g)
    assert torch.allclose(x_t, sde.mean(mu, x0, t) + sde.std(x0, t) * noise)
    assert x_t.mean().item() == pytest.approx(sde.mean(mu[:1], x0[:1], 75).item(), abs=5e-3)
    assert x_t.var().item() == pytest.approx(sde.v[75].item(), rel=0.03)
    x = x0.clone()
    for i in range(1, sde.T + 1):
        x = sde.forward_step(x, mu, i, generator=g)
    assert x.mean().item() == pytest.approx(sde.mean(mu[:1], x0[:1], sde.T).item(), abs=5e-3)
    assert x.var().item() == pytest.approx(sde.v[-1].item(), rel=0.04)


# ---- 5. score (eqs. 8, 9) ------------------------------------------------------------------

@SETTINGS
@given(sdes(), st.data())
def test_score_is_gradient_of_log_density_and_conversions_round_trip(sde, data):
    t = data.draw(st.integers(1, sde.T))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    x0, mu = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64).unbind(0)
    x0, mu = x0[None], mu[None]
    x = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    m, v = sde.mean(mu, x0, t), sde.v[t].item()
    log_p = (-(x - m) ** 2 / (2 * v) - 0.5 * math.log(2 * math.pi * v)).sum()
    (grad,) = torch.autograd.grad(log_p, x)
    score = sde.conditional_score(x.detach(), mu, x0, t)
    torch.testing.assert_close(score, grad)
    noise = (x.detach() - m) / math.sqrt(v)                          # eq. 9: score = -eps / sqrt(v)
    torch.testing.assert_close(sde.score_from_noise(noise, t), score)
    torch.testing.assert_close(sde.noise_from_score(score, t), noise)
    torch.testing.assert_close(sde.x0_from_noise(x.detach(), mu, noise, t), x0)
    torch.testing.assert_close(sde.noise_from_x0(x.detach(), mu, x0, t), noise)


# ---- 6. optimal reverse state (Prop. 3.2, eqs. 12-14) --------------------------------------

@SETTINGS
@given(sdes(), st.floats(-1, 1), st.floats(-1, 1), st.floats(-1.5, 1.5), st.data())
def test_optimal_reverse_is_gaussian_conditional(sde, x0, mu, x_t, data):
    """x*_s and its variance equal E and Var of x_s given (x_t, x0), from the joint covariance."""
    t = data.draw(st.integers(1, sde.T))
    s = data.draw(st.one_of(st.just(t - 1), st.integers(0, t - 1)))
    # Joint Gaussian of (x_s, x_t) given x0, built from the forward SDE solution (eq. 4).
    decay = math.exp(sde.theta_bar[s].item() - sde.theta_bar[t].item())
    mean_s = mu + (x0 - mu) * math.exp(-sde.theta_bar[s].item())
    mean_t = mu + (x0 - mu) * math.exp(-sde.theta_bar[t].item())
    cov = np.array([[sde.v[s].item(), decay * sde.v[s].item()],
                    [decay * sde.v[s].item(), sde.v[t].item()]])
    cond_mean = mean_s + cov[0, 1] / cov[1, 1] * (x_t - mean_t)
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    T64 = lambda a: torch.tensor([[a]], dtype=torch.float64)
    got = sde.optimal_reverse(T64(x_t), T64(mu), T64(x0), t, s).item()
    assert got == pytest.approx(cond_mean, abs=1e-9)
    assert sde.posterior_std(T64(0), t, s).item() ** 2 == pytest.approx(cond_var, abs=1e-12)


@SETTINGS
@given(sdes(), st.floats(-1, 1), st.floats(-1, 1), st.floats(-1.5, 1.5), st.data())
def test_optimal_reverse_minimises_the_negative_log_likelihood(sde, x0, mu, x_t, data):
    """eq. 13: the NLL of eq. 12 (Bayes) is smallest at x*_{i-1}."""
    i = data.draw(st.integers(2, sde.T)) if sde.T > 1 else 1
    T64 = lambda a: torch.tensor([[a]], dtype=torch.float64)
    x_star = sde.optimal_reverse(T64(x_t), T64(mu), T64(x0), i).item()

    def nll(x_prev):  # -log p(x_i | x_{i-1}) - log p(x_{i-1} | x0), dropping constants
        m_step, v_step = sde.transition(x_prev, mu, i, i - 1)
        m_prev, v_prev = sde.transition(x0, mu, i - 1, 0)
        return (x_t - m_step) ** 2 / (2 * v_step) + (x_prev - m_prev) ** 2 / (2 * v_prev)

    # nll is quadratic, so one Newton step with central differences finds its minimiser exactly
    h = 1e-2
    d1 = (nll(x_t + h) - nll(x_t - h)) / (2 * h)
    d2 = (nll(x_t + h) - 2 * nll(x_t) + nll(x_t - h)) / h**2
    assert d2 > 0
    assert x_t - d1 / d2 == pytest.approx(x_star, abs=1e-6)


def test_posterior_std_vanishes_at_the_first_step():
    sde = IRSDE(0.1, 50)
    assert sde.posterior_std(torch.zeros(1), 1, 0).item() == 0.0


# ---- 8. ML loss (eq. 15) and the Euler-Maruyama mean -------------------------------------

def em_mean_error(T, frac=0.6):
    """|EM mean with the true conditional score - x*_{i-1}| at a fixed fraction of the time axis."""
    sde = IRSDE(0.2, T, "constant", 0.01)
    i = int(frac * T)
    x0, mu, x = (torch.tensor([[a]], dtype=torch.float64) for a in (0.9, 0.1, 0.4))
    noise = sde.noise_from_score(sde.conditional_score(x, mu, x0, i), i)
    return (sde.reverse_sde_mean(x, mu, noise, i) - sde.optimal_reverse(x, mu, x0, i)).abs().item()


def test_euler_maruyama_mean_approaches_optimal_reverse_state():
    errors = [em_mean_error(T) for T in (50, 100, 200, 400)]
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < 0.3 * coarse  # error O(theta'^2) per step: quarter per halving


@SETTINGS
@given(sdes(), st.data())
def test_ml_optimum_is_sinh_scaled_noise(sde, data):
    """Section 7: the eps that makes the ML loss zero is sinh(theta')/theta' eps + c (x_i - mu);
    x0_from_reverse_mean then recovers x0 exactly."""
    i = data.draw(st.integers(2, sde.T))
    g = torch.Generator().manual_seed(1)
    x0, mu = torch.rand(2, 1, 3, 4, 4, generator=g, dtype=torch.float64).unbind(0)
    x, eps = sde.q_sample(mu, x0, torch.tensor([i]), generator=g)
    tp = sde.theta_prime[i].item()
    A, B, _ = sde._reverse_coefficients(x, i, i - 1)
    k = 2 * sde.lam**2 * tp / math.sqrt(sde.v[i].item())
    c = ((1 + tp - A) - B * math.exp(sde.theta_bar[i].item())) / k
    eps_opt = math.sinh(tp) / tp * eps + c * (x - mu)
    assert sde.ml_loss(x, mu, x0, eps_opt, torch.tensor([i])).item() < 1e-12
    mean = sde.reverse_sde_mean(x, mu, eps_opt, i)
    torch.testing.assert_close(sde.x0_from_reverse_mean(x, mu, mean, i), x0)


def test_losses_have_gradients():
    sde = IRSDE(0.1, 20)
    g = torch.Generator().manual_seed(0)
    x0, mu = torch.rand(2, 2, 3, 8, 8, generator=g).unbind(0)
    t = torch.tensor([3, 17])
    x, noise = sde.q_sample(mu, x0, t, generator=g)
    pred = torch.zeros_like(noise, requires_grad=True)
    for loss in (sde.ml_loss(x, mu, x0, pred, t), sde.noise_matching_loss(pred, noise)):
        (grad,) = torch.autograd.grad(loss, pred)
        assert loss.item() > 0 and grad.abs().sum() > 0
    assert sde.noise_matching_loss(noise, noise).item() == 0


# ---- 7, 10. reverse time on a Gaussian toy with the exact marginal score ----------------------

def gaussian_toy(sde, a, b, mu):
    """x0 ~ N(a, b^2), fixed mu: p_t = N(m_t, b^2 e^{-2 theta_bar_t} + v_t); the exact E[eps | x_t]."""
    def model(x, mu_, t):
        i = int(t[0])
        decay = math.exp(-sde.theta_bar[i].item())
        m = (mu if mu_ is not None else a) + ((a - mu) if mu_ is not None else 0.0) * decay
        b_t = (b * decay) ** 2 if mu_ is not None else b**2
        return math.sqrt(sde.v[i].item()) * (x - m) / (b_t + sde.v[i].item())
    return model


def toy_run(sampler, T, steps=None, n=100_000, lam=0.5, a=0.7, b=0.15, mu=0.2, seed=0):
    """Run a sampler on the toy from an exact draw of p_T; returns (samples, sde)."""
    sde = IRSDE(lam, T, "cosine", 0.005)
    g = torch.Generator().manual_seed(seed)
    mu_t = torch.full((n, 1), mu, dtype=torch.float64)
    x0 = a + b * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_T = sde.q_sample(mu_t, x0, torch.full((n,), T), generator=g)[0]
    ts = irsde.timesteps(sde, steps)
    return irsde.SAMPLERS[sampler](gaussian_toy(sde, a, b, mu), sde, x_T, mu_t, ts, generator=g), sde


@pytest.mark.parametrize("sampler", list(irsde.SAMPLERS))  # a new sampler is tested here too
def test_samplers_recover_gaussian_toy_with_every_index(sampler):
    """Driven by the exact score, every sampler recovers N(a, b^2); the error shrinks as T grows."""
    a, b = 0.7, 0.15
    errors = []
    for T, tol in ((100, 0.07), (400, 0.025)):
        out, _ = toy_run(sampler, T, n=50_000)
        assert abs(out.mean().item() - a) < tol * b
        errors.append(abs(out.std().item() / b - 1))
        assert errors[-1] < tol
    assert errors[1] < errors[0]


def linear_gaussian_prediction(sampler, sde, steps, lam, a, b, mu):
    """Mean and std that a few-step posterior/DDIM chain must output on the toy.

    Both samplers map y = x - mu affinely, y_s = k y_t + c + std z, because x0_hat = E[x0 | x_t] is
    affine for Gaussian data; k, c and std are rebuilt here from Gaussian conditioning."""
    mean, var = a - mu, b**2 * math.exp(-2 * sde.theta_bar[-1].item()) + sde.v[-1].item()
    mean = (a - mu) * math.exp(-sde.theta_bar[-1].item())
    ts = irsde.timesteps(sde, steps)
    for t, s in zip(ts[:-1], ts[1:]):
        d, c = math.exp(-sde.theta_bar[t].item()), math.exp(-sde.theta_bar[s].item())
        v_t, v_s = sde.v[t].item(), sde.v[s].item()
        gain = d * b**2 / (d**2 * b**2 + v_t)          # E[x0 - mu | y_t] = (a - mu) + gain (y_t - d (a - mu))
        x0_mean = (a - mu) + gain * (mean - d * (a - mu))
        if sampler == "ddim":                           # y_s = c x0_hat + sqrt(v_s) eps_hat
            eps_gain = (1 - d * gain) / math.sqrt(v_t)  # eps_hat = (y_t - d x0_hat) / sqrt(v_t)
            k, extra = c * gain + math.sqrt(v_s) * eps_gain, 0.0
            mean = c * x0_mean + math.sqrt(v_s) * (mean - d * x0_mean) / math.sqrt(v_t)
        else:                                           # y_s ~ N(E[y_s | y_t, x0 = x0_hat], Var[y_s | y_t, x0])
            cov_st, v_st = (d / c) * v_s, v_t           # Cov(y_s, y_t | x0), Var(y_t | x0)
            A = cov_st / v_st                           # regression of y_s on y_t given x0
            B = c - A * d
            k, extra = A + B * gain, v_s - cov_st**2 / v_st
            mean = A * mean + B * x0_mean
        var = k**2 * var + extra
    return mean + mu, math.sqrt(var)


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("sampler", ["posterior", "ddim"])
def test_few_step_samplers_on_gaussian_toy(sampler, steps):
    """With 5-20 respaced steps the samplers output exactly the law that Gaussian conditioning
    predicts: the mean a, and a std somewhat below b because x0_hat = E[x0 | x_t] carries no
    uncertainty (an MMSE estimate: the price of few steps, largest at 5)."""
    lam, a, b, mu = 0.5, 0.7, 0.15, 0.2
    out, sde = toy_run(sampler, 100, steps)
    mean, std = linear_gaussian_prediction(sampler, sde, steps, lam, a, b, mu)
    assert mean == pytest.approx(a, abs=1e-3 * b)
    assert out.mean().item() == pytest.approx(mean, abs=4 * b / math.sqrt(out.numel()))
    assert out.std().item() == pytest.approx(std, rel=0.01)
    assert 0.45 * b < std < b


@SETTINGS
@given(sdes(), st.lists(st.integers(0, 2), min_size=1, max_size=5), st.integers(0, 2**16))
def test_chain_states_are_where_the_samplers_chain_stands(sde, ks, seed):
    """chain_states (train.py --t-draw chain) gives each image the state x_t that the sampler's
    network call at t sees when restoring from x_T = mu + lambda z. DDIM, deterministic: each image
    at its own index against a full run of its own; posterior, random: all images at one index
    against a run of the whole batch with the same generator."""
    ts = irsde.timesteps(sde, 3)
    ks = [min(k, len(ts) - 2) for k in ks]  # network calls at ts[0..-2] (fewer than 3 when T < 3)
    mu = torch.rand(len(ks), 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    model = irsde.noise_model(lambda x, mu_, t: 0.5 * (x - mu_) + 0.01 * t.view(-1, 1, 1, 1), sde, "x0")
    t = torch.tensor([ts[k] for k in ks])
    states = irsde.chain_states(model, sde, mu, t, ts, "ddim", torch.Generator().manual_seed(seed))
    x_T = mu + sde.lam * torch.randn(mu.shape, dtype=mu.dtype, generator=torch.Generator().manual_seed(seed))
    for b, k in enumerate(ks):
        seen = []
        irsde.sample_ddim(model, sde, x_T[b:b + 1], mu[b:b + 1], ts, callback=seen.append)
        torch.testing.assert_close(states[b:b + 1], seen[k]["x"], rtol=0, atol=1e-12)
    seen = []
    irsde.sample(model, sde, mu, 3, "posterior", torch.Generator().manual_seed(seed), callback=seen.append)
    together = irsde.chain_states(model, sde, mu, torch.full_like(t, ts[ks[0]]), ts, "posterior",
                                  torch.Generator().manual_seed(seed))
    torch.testing.assert_close(together, seen[ks[0]]["x"], rtol=0, atol=1e-12)
    if ts[0] - ts[1] > 1:  # an index between two of ts has no state on that chain
        with pytest.raises(ValueError, match=f"indices \\[{ts[0] - 1}\\] are not among"):
            irsde.chain_states(model, sde, mu, torch.full_like(t, ts[0] - 1), ts)


@SETTINGS
@given(sdes(), st.lists(st.integers(0, 9), min_size=1, max_size=6), st.integers(0, 2**16))
def test_chain_states_follow_their_definition_with_the_same_random_draws(sde, ks, seed):
    """chain_states, which works out on the host which images each step moves, equals the chain
    written as its definition (a mask per step, the moving images in batch order): the same
    states and the same draws from the generator, so that training on the CPU is unchanged."""
    ts = irsde.timesteps(sde, 10)
    t = torch.tensor([ts[min(k, len(ts) - 2)] for k in ks])
    mu = torch.rand(len(ks), 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    model = irsde.noise_model(lambda x, mu_, t_: 0.5 * (x - mu_) + 0.01 * t_.view(-1, 1, 1, 1), sde, "x0")
    generator = torch.Generator().manual_seed(seed)
    x = mu + sde.lam * torch.randn(mu.shape, dtype=mu.dtype, generator=generator)
    for t_now, s in zip(ts[:-1], ts[1:]):
        going = t < t_now
        if going.any():
            x[going] = irsde.sample_posterior(model, sde, x[going], mu[going], [t_now, s], generator)
    states = irsde.chain_states(model, sde, mu, t, ts, "posterior", torch.Generator().manual_seed(seed))
    torch.testing.assert_close(states, x, rtol=0, atol=0)


def test_ode_and_ddim_are_deterministic_given_the_start():
    sde, model = IRSDE(0.3, 30), gaussian_toy(IRSDE(0.3, 30), 0.5, 0.1, 0.0)
    x_T = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu = torch.zeros(64, 1, dtype=torch.float64)
    for sampler in ("ode", "ddim"):
        outs = [irsde.SAMPLERS[sampler](model, sde, x_T, mu, irsde.timesteps(sde),
                                        generator=torch.Generator().manual_seed(k)) for k in (1, 2)]
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_timesteps_respacing():
    sde = IRSDE(0.1, 100)
    assert irsde.timesteps(sde) == list(range(100, -1, -1))
    ts = irsde.timesteps(sde, 10)
    assert ts[0] == 100 and ts[-1] == 0 and len(ts) == 11 and all(a > b for a, b in zip(ts, ts[1:]))
    assert irsde.timesteps(sde, 50, t_start=22) == list(range(22, -1, -1))


def test_callback_sees_every_state_and_noise_model_x0_parameterisation():
    sde = IRSDE(0.2, 20)
    mu = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    net = lambda x, mu_, t: 0.5 - mu_            # a residual from mu towards 0.5
    model = irsde.noise_model(net, sde, "x0")
    out = irsde.sample(model, sde, mu, 5, "ddim", callback=seen.append)
    ts = irsde.timesteps(sde, 5)
    assert [(step["t"], step["s"]) for step in seen] == list(zip(ts[:-1], ts[1:]))
    assert [step["i"] for step in seen] == list(range(5))
    for before, after in zip(seen, seen[1:]):  # x is the state at t that the network saw: the previous step's result
        noise = sde.noise_from_x0(before["x"], mu, before["x0"], before["t"])
        torch.testing.assert_close(after["x"], sde.mean(mu, before["x0"], after["t"]) + sde.std(mu, after["t"]) * noise)
    for step in seen:  # the callback also receives the x0 predicted from that state
        # x0 = mu + (x - mu - sqrt(v) noise) e^{theta_bar}: float32 round-off grows by up to 1 / eps
        torch.testing.assert_close(step["x0"], torch.full_like(mu, 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # DDIM lands on x0_hat at s = 0


# ---- 9. Gaussian denoising (section 4.3, eq. 16) ------------------------------------------

@SETTINGS
@given(sdes(), st.floats(0.05, 0.95))
def test_start_index_matches_brute_force(sde, frac):
    sigma = frac * sde.lam
    target = -0.5 * math.log(1 - sigma**2 / sde.lam**2)
    brute = min(range(sde.T + 1), key=lambda i: abs(sde.theta_bar[i].item() - target))
    assert sde.start_index(sigma) == brute


def test_start_index_paper_value():
    """Paper: lambda = 70/255, T = 100, eps = 0.04 (denoising) and sigma = 25 gives t* = 22."""
    assert IRSDE(70 / 255, 100, "cosine", 0.04).start_index(25 / 255) == 22
    with pytest.raises(ValueError, match="lambda"):
        IRSDE(10 / 255).start_index(25 / 255)


@pytest.mark.parametrize("sampler", ["ode", "sde", "ddim"])
def test_denoising_takes_noisy_toy_to_clean(sampler):
    sde, a, b, sigma, n = IRSDE(70 / 255, 100, "cosine", 0.04), 0.5, 0.1, 25 / 255, 100_000
    g = torch.Generator().manual_seed(0)
    x0 = a + b * torch.randn(n, 1, generator=g, dtype=torch.float64)
    t_star = sde.start_index(sigma)
    noisy = x0 + math.sqrt(sde.v[t_star].item()) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = irsde.denoise(gaussian_toy(sde, a, b, None), sde, noisy, sigma, sampler=sampler, generator=g)
    assert abs(out.mean().item() - a) < 0.03 * b
    assert out.std().item() == pytest.approx(b, rel=0.03)
    if sampler == "ode":  # deterministic: it moves each sample, it does not resample
        assert (out - noisy).abs().mean() < (noisy - a).abs().mean()


@SETTINGS
@given(sdes(T=st.integers(2, 120)), st.booleans(), st.data())
def test_posterior_ml_loss_is_the_x0_error_with_optimum_x0(sde, denoising, data):
    """posterior_ml_loss: the model's reverse mean is eq. 14 with x0_hat, so J = B |x0_hat - x0| and,
    weighted by 1/B, exactly mean |x0_hat - x0|; its minimiser is the true noise. The paper's
    Euler-Maruyama step is not minimised by the true noise (its optimum is sinh-scaled, see
    test_ml_optimum_is_sinh_scaled_noise), so the x0 it fits carries x_t's noise."""
    i = data.draw(st.integers(1, sde.T))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    x0, mu, delta = torch.rand(3, 1, 3, 4, 4, generator=g, dtype=torch.float64).unbind(0)
    mu = None if denoising else mu
    t = torch.tensor([i])
    x, noise = sde.q_sample(mu, x0, t, generator=g)
    eps = sde.noise_from_x0(x, mu, x0 + delta, t)
    assert irsde.posterior_ml_loss(sde, x, mu, x0, eps, t).item() == pytest.approx(delta.abs().mean().item(), rel=1e-6)
    assert irsde.posterior_ml_loss(sde, x, mu, x0, noise, t).item() < 1e-9


def test_coefficient_tables_are_moved_to_a_device_once():
    """_at copies each table to a device and dtype once (a host copy per call would make the host
    wait for the GPU in every step), and a cached table gives the values of the float64 original."""
    sde = irsde.IRSDE(10 / 255, T=20)
    x, t = torch.zeros(3, 1, 2, 2, dtype=torch.float32), torch.tensor([1, 7, 20])
    for _ in range(3):
        sde.mean(x + 1, x, t), sde.std(x, t), sde.x0_from_noise(x, x + 1, x, t), sde.std(x.double(), t)
    assert len(sde._tables) == 4  # e^{-theta_bar}, sqrt(v), e^{theta_bar} in float32; sqrt(v) in float64
    assert torch.equal(sde.std(x, t).flatten(), sde.v.sqrt()[t].float())
    assert torch.equal(sde.std(x.double(), t).flatten(), sde.v.sqrt()[t])
