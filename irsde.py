"""The mean-reverting SDE of IR-SDE (Luo et al., ICML 2023), in the reference code's discretisation.

Two parts. The paper: schedules, the IRSDE class (eqs. 3-16), the samplers of the paper and the
authors' code (Euler-Maruyama on eq. 7, the probability-flow ODE, posterior sampling), `sample` and
`denoise`. Beyond the paper: this project's additions, each with its reason; the paper's recipe
(train.py --preset paper) uses none of them. "eq. N" and "Sec. N" are the paper's; "PAPER.md §N" is
this repository's restatement, the specification. Images live in [0, 1], and so does `lam` (lambda,
the reference's `max_sigma`): its `max_sigma: 10` is 10/255 here.

Notation: x0 the high-quality (HQ) image, mu the low-quality (LQ) one, t = 0..T the step index (t = 0
is x0) and s < t an earlier one, theta_bar_t = integral_0^t theta, v_t the marginal variance, "noise"
the standard normal noise of eq. 9 (the paper's epsilon). Methods take (x, mu, x0 or noise, t, s) in
that order; mu=None is the Gaussian-denoising SDE of Sec. 4.3, mu = x0 unknown (PAPER.md §5).

A network is used as model(x, mu, t) -> predicted noise (eq. 10). Samplers follow k-diffusion:
sample_X(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False) runs from the state x
at index ts[0] down to ts[-1] = 0. Before each step from t to s, callback gets dict(i, t, s, x, x0):
the state at t and the network's x0 predicted from it, which clip_x0 projects onto [0, 1].
"""
import inspect
import math

import torch
import torch.nn.functional as F


def theta_schedule(name, T):
    """Raw schedule theta_t, t = 0..T, exactly as the reference code builds it (PAPER.md §6)."""
    if name == "constant":
        return torch.ones(T + 1, dtype=torch.float64)
    if name == "linear":
        scale = 1000 / (T + 1)
        return torch.linspace(0.0001 * scale, 0.02 * scale, T + 1, dtype=torch.float64)
    if name == "cosine":  # 1 - alpha_bar of the cosine schedule, not DDPM's beta
        n = T + 2
        k = torch.arange(n + 1, dtype=torch.float64)
        a = torch.cos((k / n + 0.008) / 1.008 * math.pi / 2) ** 2
        return 1 - (a / a[0])[1:-1]
    raise ValueError(f"unknown schedule {name!r}: choose constant, linear or cosine")


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class IRSDE:
    """dx = theta_t (mu - x) dt + sigma_t dw with sigma_t^2 / theta_t = 2 lambda^2 (eq. 3).

    The coefficients are float64 tables over t = 0..T (PAPER.md §6); `theta_rate[t]` is the schedule's
    theta_t, a rate per unit of time, and a step lasts `dt`. `eps` is e^{-theta_bar_T} (the reference's
    name), never the noise. x, mu, x0 and noise are (B, C, H, W) (any shape with the batch first), of
    any dtype and device; t and s are ints or LongTensors (B,), an index per image, and s defaults to
    t - 1. Methods return x's shape, except the losses (scalars) and `transition` (a mean and a float).
    """

    def __init__(self, lam=10 / 255, T=100, schedule="cosine", eps=0.005):
        if not 0 < lam <= 1:
            hint = f" (did you mean {lam}/255 = {lam / 255:.4f}?)" if lam > 1 else ""
            raise ValueError(f"lambda must be in (0, 1] on the [0, 1] image scale{hint}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        self.lam, self.T, self.schedule, self.eps = float(lam), int(T), schedule, float(eps)
        self.theta_rate = theta_schedule(schedule, T)
        Theta = torch.cat([torch.zeros(1, dtype=torch.float64), self.theta_rate[1:].cumsum(0)])
        self.dt = -math.log(eps) / Theta[-1].item()               # makes e^{-theta_bar_T} = eps
        self.theta_prime = self.theta_rate * self.dt               # theta'_t: integral of theta over step t
        self.theta_bar = Theta * self.dt                           # integral of theta over [0, t]
        self.sigma_rate = (2 * self.lam**2 * self.theta_rate).sqrt()  # sigma_t^2 / theta_t = 2 lambda^2
        self.v = self.lam**2 * (1 - torch.exp(-2 * self.theta_bar))   # eq. 6
        self.sqrt_v = self.v.sqrt()
        self.exp_theta_bar, self.exp_minus_theta_bar = torch.exp(self.theta_bar), torch.exp(-self.theta_bar)
        self._tables = {}  # (table, device, dtype) -> the table there; see _at

    def config(self):
        return dict(lam=self.lam, T=self.T, schedule=self.schedule, eps=self.eps)

    def _at(self, values, x, t, dtype=None):
        """values[t] shaped (B, 1, ..., 1) on x's device, in x's dtype unless given. Each table is copied
        to a device once: a host copy per call would make the host wait for the GPU at every step."""
        key = (id(values), x.device, dtype or x.dtype)
        if key not in self._tables:
            self._tables[key] = values.to(x.device).to(dtype or x.dtype)
        values = self._tables[key]
        if isinstance(t, int):
            return values[t]
        return values[t.to(x.device)].view(-1, *([1] * (x.dim() - 1)))

    def _theta_bar_between(self, x, t, s=None):
        """theta_bar_{s:t} = theta_bar_t - theta_bar_s (theta'_t when s = t - 1), differenced in float64."""
        s = t - 1 if s is None else s
        between = self._at(self.theta_bar, x, t, torch.float64) - self._at(self.theta_bar, x, s, torch.float64)
        return between.to(x.dtype)

    # ---- forward process -------------------------------------------------------------------

    def transition(self, x_s, mu, t, s):
        """Mean and variance of p(x_t | x_s) for integers s < t (eq. 5)."""
        decay = math.exp(-(self.theta_bar[t] - self.theta_bar[s]).item())
        var = self.lam**2 * (1 - decay**2)
        return mu + (x_s - mu) * decay, var

    def mean(self, mu, x0, t):
        """m_t = mu + (x0 - mu) e^{-theta_bar_t} (eq. 6); mu=None (mu = x0) gives x0."""
        if mu is None:
            return x0
        return mu + (x0 - mu) * self._at(self.exp_minus_theta_bar, x0, t)

    def std(self, x, t):
        """sqrt(v_t) = lambda sqrt(1 - e^{-2 theta_bar_t}) (eq. 6), shaped to broadcast with x."""
        return self._at(self.sqrt_v, x, t)

    def q_sample(self, mu, x0, t, generator=None):
        """(x_t, noise): x_t = m_t + sqrt(v_t) noise drawn from x0 (eq. 6, 9); mu=None: m_t = x0."""
        noise = _randn(x0, generator)
        return self.mean(mu, x0, t) + self.std(x0, t) * noise, noise

    def forward_step(self, x, mu, t, generator=None):
        """One Euler-Maruyama step of eq. 3 from index t - 1 to t (mu given)."""
        theta_prime = self._at(self.theta_prime, x, t)
        return x + theta_prime * (mu - x) + (2 * self.lam**2 * theta_prime).sqrt() * _randn(x, generator)

    # ---- score and its conversions ----------------------------------------------------------

    def conditional_score(self, x, mu, x0, t):
        """grad_x log p_t(x | x0) = -(x - m_t) / v_t (eq. 8); mu=None: m_t = x0."""
        return -(x - self.mean(mu, x0, t)) / self._at(self.v, x, t)

    def score_from_noise(self, noise, t):
        """grad_x log p_t = -noise / sqrt(v_t) (eq. 9)."""
        return -noise / self.std(noise, t)

    def noise_from_score(self, score, t):
        """Inverse of eq. 9: noise = -sqrt(v_t) score."""
        return -score * self.std(score, t)

    def x0_from_noise(self, x, mu, noise, t):
        """x0 such that x = m_t(x0) + sqrt(v_t) noise (eq. 6 solved for x0); mu=None: m_t = x0."""
        if mu is None:
            return x - self.std(x, t) * noise
        return mu + (x - mu - self.std(x, t) * noise) * self._at(self.exp_theta_bar, x, t)

    def noise_from_x0(self, x, mu, x0, t):
        """noise = (x - m_t(x0)) / sqrt(v_t), the inverse of x0_from_noise (mu=None alike)."""
        return (x - self.mean(mu, x0, t)) / self.std(x, t)

    # ---- optimal reverse state (Prop. 3.2) ---------------------------------------------------

    def _reverse_coefficients(self, x, t, s=None):
        """(A, B, var) with x*_s = A (x_t - mu) + B (x0 - mu) + mu (eq. 14, PAPER.md §7) and var the
        variance of p(x_s | x_t, x0); computed in float64, since 1 - e^{-2 theta_bar_1} is tiny."""
        s = t - 1 if s is None else s
        theta_bar_t = self._at(self.theta_bar, x, t, torch.float64)
        theta_bar_s = self._at(self.theta_bar, x, s, torch.float64)
        decay_st = torch.exp(theta_bar_s - theta_bar_t)   # e^{-theta_bar_{s:t}}
        decay_s, decay_t = torch.exp(-theta_bar_s), torch.exp(-theta_bar_t)
        A = decay_st * (1 - decay_s**2) / (1 - decay_t**2)
        B = decay_s * (1 - decay_st**2) / (1 - decay_t**2)
        var = self.lam**2 * (1 - decay_st**2) * (1 - decay_s**2) / (1 - decay_t**2)
        return A.to(x.dtype), B.to(x.dtype), var.to(x.dtype)

    def optimal_reverse(self, x, mu, x0, t, s=None):
        """x*_s = argmax p(x_s | x_t, x0), that Gaussian's mean (eq. 14, the paper's x*_{i-1} at s = t - 1;
        any s < t, PAPER.md §7). mu=None: mu = x0."""
        mu = x0 if mu is None else mu
        A, B, _ = self._reverse_coefficients(x, t, s)
        return A * (x - mu) + B * (x0 - mu) + mu

    def posterior_std(self, x, t, s=None):
        """Standard deviation of p(x_s | x_t, x0) (PAPER.md §4, §7); zero at s = 0. Independent of mu."""
        return self._reverse_coefficients(x, t, s)[2].clamp_min(0).sqrt()

    def x0_from_reverse_mean(self, x, mu, mean, t, s=None):
        """The x0 whose optimal reverse state is `mean`, what eq. 15 fits (PAPER.md §7); mu=None: mu = x0."""
        A, B, _ = self._reverse_coefficients(x, t, s)
        if mu is None:
            return (mean - A * x) / (1 - A)
        return mu + (mean - mu - A * (x - mu)) / B

    # ---- reverse-time steps ------------------------------------------------------------------

    def _reverse_euler(self, x, mu, noise, t, s, g2):
        """x - [theta'(mu - x) - g2 theta' score], theta' = theta_bar_{s:t}, g2 = g^2 / theta: eq. 7's mean
        with 2 lambda^2, the probability-flow ODE's step with lambda^2. mu=None: the drift is rewritten
        through the score, theta (x0 - x) = theta v_t score (PAPER.md §5)."""
        score = self.score_from_noise(noise, t)
        theta_prime = self._theta_bar_between(x, t, s)
        drift = theta_prime * self._at(self.v, x, t) * score if mu is None else theta_prime * (mu - x)
        return x - (drift - g2 * theta_prime * score)

    def reverse_sde_mean(self, x, mu, noise, t, s=None):
        """Euler-Maruyama mean of eq. 7 from t to s. mu=None: the denoising SDE (PAPER.md §5)."""
        return self._reverse_euler(x, mu, noise, t, s, 2 * self.lam**2)

    def reverse_sde_step(self, x, mu, noise, t, s=None, generator=None):
        """One Euler-Maruyama step of eq. 7, new noise of std sqrt(2 lambda^2 theta'); mu=None as reverse_sde_mean."""
        theta_prime = self._theta_bar_between(x, t, s)
        dw = (2 * self.lam**2 * theta_prime).sqrt() * _randn(x, generator)
        return self.reverse_sde_mean(x, mu, noise, t, s) + dw

    def reverse_ode_step(self, x, mu, noise, t, s=None):
        """One Euler step of the probability-flow ODE, g^2/2 for g^2 (eq. 2 note); mu=None: eq. 16's ODE."""
        return self._reverse_euler(x, mu, noise, t, s, self.lam**2)

    def posterior_step(self, x, mu, x0, t, s=None, generator=None):
        """Draw x_s ~ p(x_s | x_t, x0) with x0 predicted: mean eq. 14, std PAPER.md §4. mu=None: mu = x0."""
        return self.optimal_reverse(x, mu, x0, t, s) + self.posterior_std(x, t, s) * _randn(x, generator)

    # ---- objectives --------------------------------------------------------------------------

    def noise_matching_loss(self, noise_pred, noise):
        """L_gamma of eq. 10 with gamma_t = 1: mean squared error of the predicted noise."""
        return F.mse_loss(noise_pred, noise)

    def ml_loss(self, x, mu, x0, noise_pred, t):
        """J_gamma of eq. 15 as the reference trains it, gamma_t = 1 and L1: mean |x_t - (dx_t)_phi - x*_{t-1}|,
        the network's Euler-Maruyama mean (eq. 7) against the optimal reverse state (eq. 14). mu=None: mu = x0."""
        error = (self.reverse_sde_mean(x, mu, noise_pred, t) - self.optimal_reverse(x, mu, x0, t)).abs()
        return error.mean()

    # ---- denoising start (Sec. 4.3) ----------------------------------------------------------

    def start_index(self, noise_sigma):
        """t* = argmin_t |theta_bar_t - theta_bar*|, theta_bar* = -1/2 ln(1 - sigma^2 / lambda^2) (PAPER.md §5)."""
        if not 0 < noise_sigma < self.lam:
            raise ValueError(f"noise sigma {noise_sigma:.4f} must be in (0, lambda = {self.lam:.4f}); "
                             "both are on the [0, 1] scale (25/255 = 0.098)")
        target = -0.5 * math.log(1 - noise_sigma**2 / self.lam**2)
        return int((self.theta_bar - target).abs().argmin())


# ---- samplers -----------------------------------------------------------------------------------

def timesteps(sde, steps=None, t_start=None):
    """Decreasing indices t_start = tau_K > ... > tau_0 = 0: all of them for steps=None (the reference's loop),
    else evenly spaced (respacing, PAPER.md §7: eq. 14 and every method here hold between any s < t)."""
    t_start = sde.T if t_start is None else t_start
    steps = t_start if steps is None else min(steps, t_start)
    return torch.linspace(t_start, 0, steps + 1, dtype=torch.float64).round().long().tolist()


def _predict(model, sde, x, mu, t, clip_x0):
    """Network call at integer index t -> (noise, x0_hat); clip_x0 projects x0_hat onto [0, 1]."""
    noise = model(x, mu, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    x0 = sde.x0_from_noise(x, mu, noise, t)
    if clip_x0:
        x0 = x0.clamp(0, 1)
        noise = sde.noise_from_x0(x, mu, x0, t)
    return noise, x0


@torch.no_grad()
def sample_sde(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False):
    """Euler-Maruyama on the reverse IR-SDE (eq. 7), the paper's sampler (Sec. 3.2)."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, s=s, x=x, x0=x0))
        x = sde.reverse_sde_step(x, mu, noise, t, s, generator)  # Euler-Maruyama step
    return x


@torch.no_grad()
def sample_ode(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False):
    """Euler on the probability-flow ODE of eq. 7 (the denoising ODE, eq. 16, when mu is None)."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, s=s, x=x, x0=x0))
        x = sde.reverse_ode_step(x, mu, noise, t, s)  # Euler step, no new noise
    return x


@torch.no_grad()
def sample_posterior(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False):
    """Ancestral sampling from p(x_s | x_t, x0_hat) (eq. 14 and its variance): the authors' test configs'
    sampler (`reverse_posterior`), for every task but denoising."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, s=s, x=x, x0=x0))
        x = sde.posterior_step(x, mu, x0, t, s, generator)  # posterior draw; deterministic at s = 0
    return x


def _sampler(name):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    try:  # a fork's sampler must take the samplers' arguments
        inspect.signature(SAMPLERS[name]).bind(None, None, None, None, [], generator=None, callback=None, clip_x0=False)
    except TypeError as e:
        raise TypeError(f"sampler {name!r}: every entry of irsde.SAMPLERS takes (model, sde, x, mu, ts, "
                        f"generator=None, callback=None, clip_x0=False) ({e})") from None
    return SAMPLERS[name]


def sample(model, sde, mu, steps=None, sampler="posterior", generator=None, **kwargs):
    """Restore mu (B, C, H, W): from x_T = mu + lambda z (PAPER.md §6; drops the eps (x0 - mu) residual),
    run the named sampler of SAMPLERS over `steps` respaced indices."""
    run = _sampler(sampler)
    x = mu + sde.lam * _randn(mu, generator)
    return run(model, sde, x, mu, timesteps(sde, steps), generator=generator, **kwargs)


def denoise(model, sde, noisy, noise_sigma, steps=None, sampler="ode", generator=None, **kwargs):
    """Gaussian denoising (Sec. 4.3): the noisy image is the state at t*, run from there with mu=None (eq. 16)."""
    run = _sampler(sampler)
    ts = timesteps(sde, steps, sde.start_index(noise_sigma))
    return run(model, sde, noisy, None, ts, generator=generator, **kwargs)


# ==== beyond the paper: what this project adds ====================================================
# The paper's recipe restores after 700k GPU steps and 100 network evaluations; these make a few-step
# chain train in minutes (README, "What the presets change"), respaced by `timesteps` and the `s` above.

@torch.no_grad()
def sample_ddim(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False):
    """Deterministic posterior variant: x_s = m_s(x0_hat) + sqrt(v_s) noise_hat (DDIM, eta = 0; PAPER.md §7).
    Why: with few steps, a sampler that adds no noise; with mu=None, the denoising task's few-step sampler."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, s=s, x=x, x0=x0))
        x = sde.mean(mu, x0, s) + sde.std(x, s) * noise  # reuse the predicted noise
    return x


SAMPLERS = {"sde": sample_sde, "ode": sample_ode, "posterior": sample_posterior, "ddim": sample_ddim}


def noise_model(net, sde, param="noise"):
    """Wrap a network as model(x, mu, t) -> noise. param "noise": it predicts the noise (eq. 10, the
    paper); "x0": a residual r, x0_hat = mu + r (x + r when mu=None), turned into noise by eq. 6. Why:
    anchored at mu, an untrained network already returns the LQ image, and x_t's noise, divided by
    e^{-theta_bar_T} = eps, never swamps an x0 read off a noise guess."""
    if param == "noise":
        return net
    if param != "x0":
        raise ValueError(f"unknown parameterisation {param!r}: choose noise or x0")

    def model(x, mu, t):
        return sde.noise_from_x0(x, mu, (x if mu is None else mu) + net(x, mu, t), t)
    return model


def posterior_ml_loss(sde, x, mu, x0, noise_pred, t):
    """Eq. 15 with the posterior step's mean (eq. 14 at x0_hat) for the Euler-Maruyama one and gamma_t =
    1 / B_t (x0's coefficient in eq. 14; 1 - A_t when mu=None): exactly mean |x0_hat - x0|. Why: the
    paper's step fits an x0_hat carrying x_t's noise near T (PAPER.md §7), where with gamma_t = 1 and
    B_t ~ eps it hardly trains; a few-step chain leans most on the x0 predicted there."""
    mean = sde.optimal_reverse(x, mu, sde.x0_from_noise(x, mu, noise_pred, t), t)
    error = (mean - sde.optimal_reverse(x, mu, x0, t)).abs()
    A, B, _ = sde._reverse_coefficients(x, t, t - 1)
    return (error / ((1 - A) if mu is None else B)).mean()  # mu=None: x*_{t-1} = A (x_t - x0) + x0


@torch.no_grad()
def chain_states(model, sde, mu, t, ts, sampler="posterior", generator=None, clip_x0=False):
    """The states at the indices t (B,), each one of ts, of the sampler's own chain from x_T = mu + lambda z,
    as `sample` runs it. Why: trained on the forward process, the network learns to copy x0 out of x_t
    below t of about 50, and the chain then copies its own first guess (PAPER.md §12); here it sees x_t
    as sampling builds it, from its own earlier x0 predictions."""
    run = _sampler(sampler)
    x = mu + sde.lam * _randn(mu, generator)
    # the images each step moves, from one host read of t and one copy: a mask per step would wait for the GPU
    targets = t.tolist()
    if not set(targets) <= set(ts[:-1]):
        raise ValueError(f"chain_states: the indices {sorted(set(targets) - set(ts[:-1]))} are not among {ts[:-1]}")
    going = [[b for b, target in enumerate(targets) if target < t_now] for t_now in ts[:-1]]
    going = [rows for rows in going if rows]  # ts decreases: the empty lists are the last ones
    if not going:
        return x
    moved = torch.tensor([b for rows in going for b in rows], device=x.device).split(list(map(len, going)))
    for (t_now, s), rows in zip(zip(ts[:-1], ts[1:]), moved):
        x[rows] = run(model, sde, x[rows], mu[rows], [t_now, s], generator=generator, clip_x0=clip_x0)
    return x
