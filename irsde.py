"""The mean-reverting SDE of IR-SDE (Luo et al., ICML 2023), in the reference code's discretisation.

Equation numbers follow the paper; PAPER.md in this repository restates them.
Images live in [0, 1]; `max_sigma` (lambda) is on that scale, so the reference's `max_sigma: 10`
is 10/255 here.

Notation: x0 the high-quality (HQ) image, mu the low-quality (LQ) image, i = 0..T the step index
(i = 0 is x0), theta_bar_i = integral_0^i theta, v_i the marginal variance. `mu=None` everywhere
means the Gaussian-denoising SDE of section 4.3, where mu = x0 is unknown and the drift is
rewritten through the score (PAPER.md section 5).

Every function that uses a network takes `model(x, mu, t)` returning the predicted noise eps
(eq. 10); `noise_model` adapts networks that predict x0 instead.
"""
import math

import torch
import torch.nn.functional as F


def theta_schedule(name, T):
    """Raw schedule theta_i, i = 0..T, exactly as the reference code builds it (PAPER.md section 6)."""
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

    Coefficients are computed once, in float64, for the indices i = 0..T; methods gather them at
    integer (or LongTensor (B,)) indices and broadcast over images of any dtype and device.
    """

    def __init__(self, max_sigma=10 / 255, T=100, schedule="cosine", eps=0.005):
        if not 0 < max_sigma <= 1:
            hint = f" (did you mean {max_sigma}/255 = {max_sigma / 255:.4f}?)" if max_sigma > 1 else ""
            raise ValueError(f"max_sigma (lambda) must be in (0, 1] on the [0, 1] image scale{hint}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        self.lam, self.T, self.schedule, self.eps = float(max_sigma), int(T), schedule, float(eps)
        self.theta = theta_schedule(schedule, T)
        Theta = torch.cat([torch.zeros(1, dtype=torch.float64), self.theta[1:].cumsum(0)])
        self.dt = -math.log(eps) / Theta[-1].item()          # makes e^{-theta_bar_T} = eps
        self.theta_prime = self.theta * self.dt                 # integral of theta over step i
        self.theta_bar = Theta * self.dt                        # integral of theta over [0, i]
        self.sigma = (2 * self.lam**2 * self.theta).sqrt()      # sigma_i^2 / theta_i = 2 lambda^2
        self.v = self.lam**2 * (1 - torch.exp(-2 * self.theta_bar))  # eq. 6

    def config(self):
        return dict(max_sigma=self.lam, T=self.T, schedule=self.schedule, eps=self.eps)

    def _at(self, values, t, x, dtype=None):
        """values[t] shaped (B, 1, ..., 1) on x's device, in x's dtype unless given; t an int or LongTensor (B,)."""
        values = values.to(x.device).to(dtype or x.dtype)
        if isinstance(t, int):
            return values[t]
        return values[t.to(x.device)].view(-1, *([1] * (x.dim() - 1)))

    def _theta_prime(self, t, s, x):
        """theta_bar_t - theta_bar_s (theta'_t when s = t - 1), differenced in float64."""
        return (self._at(self.theta_bar, t, x, torch.float64) - self._at(self.theta_bar, s, x, torch.float64)).to(x.dtype)

    # ---- forward process -------------------------------------------------------------------

    def transition(self, x_s, mu, s, t):
        """Mean and variance of p(x(t) | x(s)) for integers s < t (eq. 5)."""
        decay = math.exp(-(self.theta_bar[t] - self.theta_bar[s]).item())
        var = self.lam**2 * (1 - decay**2)
        return mu + (x_s - mu) * decay, var

    def mean(self, x0, mu, t):
        """m_t = mu + (x0 - mu) e^{-theta_bar_t} (eq. 6); mu=None (denoising) gives x0."""
        if mu is None:
            return x0
        return mu + (x0 - mu) * self._at(torch.exp(-self.theta_bar), t, x0)

    def std(self, t, x):
        """sqrt(v_t) = lambda sqrt(1 - e^{-2 theta_bar_t}) (eq. 6), broadcast like x."""
        return self._at(self.v.sqrt(), t, x)

    def q_sample(self, x0, mu, t, generator=None):
        """Draw x_t = m_t + sqrt(v_t) eps from x0 (eq. 6, 9); returns (x_t, eps)."""
        noise = _randn(x0, generator)
        return self.mean(x0, mu, t) + self.std(t, x0) * noise, noise

    def forward_step(self, x, mu, i, generator=None):
        """One Euler-Maruyama step of eq. 3 from index i-1 to i."""
        theta_prime = self._at(self.theta_prime, i, x)
        return x + theta_prime * (mu - x) + (2 * self.lam**2 * theta_prime).sqrt() * _randn(x, generator)

    # ---- score and its conversions ----------------------------------------------------------

    def conditional_score(self, x, x0, mu, t):
        """grad_x log p_t(x | x0) = -(x - m_t) / v_t (eq. 8)."""
        return -(x - self.mean(x0, mu, t)) / self._at(self.v, t, x)

    def score_from_noise(self, noise, t):
        """grad_x log p_t = -eps / sqrt(v_t) (eq. 9)."""
        return -noise / self.std(t, noise)

    def noise_from_score(self, score, t):
        """Inverse of eq. 9: eps = -sqrt(v_t) * score."""
        return -score * self.std(t, score)

    def x0_from_noise(self, x, mu, noise, t):
        """x0 such that x = m_t(x0) + sqrt(v_t) eps (eq. 6 solved for x0)."""
        if mu is None:
            return x - self.std(t, x) * noise
        return mu + (x - mu - self.std(t, x) * noise) * self._at(torch.exp(self.theta_bar), t, x)

    def noise_from_x0(self, x, mu, x0, t):
        """eps = (x - m_t(x0)) / sqrt(v_t), the inverse of x0_from_noise."""
        return (x - self.mean(x0, mu, t)) / self.std(t, x)

    # ---- optimal reverse state (Prop. 3.2) ---------------------------------------------------

    def _reverse_coefficients(self, t, s, x):
        """(A, B, var) with x*_s = A (x_t - mu) + B (x0 - mu) + mu and posterior variance var."""
        theta_bar_t = self._at(self.theta_bar, t, x, torch.float64)  # float64: 1 - e^{-2 theta_bar_1} is tiny
        theta_bar_s = self._at(self.theta_bar, s, x, torch.float64)
        a, c, d = torch.exp(theta_bar_s - theta_bar_t), torch.exp(-theta_bar_s), torch.exp(-theta_bar_t)
        A = a * (1 - c**2) / (1 - d**2)
        B = c * (1 - a**2) / (1 - d**2)
        var = self.lam**2 * (1 - a**2) * (1 - c**2) / (1 - d**2)
        return A.to(x.dtype), B.to(x.dtype), var.to(x.dtype)

    def optimal_reverse(self, x, x0, mu, t, s=None):
        """x*_s = argmax p(x_s | x_t, x0), the mean of that Gaussian (eq. 14, generalised to s < t).

        s defaults to t - 1 (the paper's x*_{i-1}). mu=None is the denoising case mu = x0.
        """
        s = t - 1 if s is None else s
        mu = x0 if mu is None else mu
        A, B, _ = self._reverse_coefficients(t, s, x)
        return A * (x - mu) + B * (x0 - mu) + mu

    def posterior_std(self, t, s, x):
        """Standard deviation of p(x_s | x_t, x0) (section 4 / 7); zero at s = 0."""
        return self._reverse_coefficients(t, s, x)[2].clamp_min(0).sqrt()

    def x0_from_reverse_mean(self, mean, x, mu, t, s=None):
        """The x0 whose optimal reverse state equals `mean`: what the ML loss (15) fits (section 7)."""
        s = t - 1 if s is None else s
        A, B, _ = self._reverse_coefficients(t, s, x)
        if mu is None:  # x*_s = A (x_t - x0) + x0
            return (mean - A * x) / (1 - A)
        return mu + (mean - mu - A * (x - mu)) / B

    # ---- reverse-time steps ------------------------------------------------------------------

    def _drift(self, x, mu, score, t, s):
        """integral_s^t theta (mu - x) dz, or theta' v_t score when mu = x0 is unknown (section 5)."""
        theta_prime = self._theta_prime(t, s, x)
        if mu is None:
            return theta_prime * self._at(self.v, t, x) * score, theta_prime
        return theta_prime * (mu - x), theta_prime

    def reverse_sde_mean(self, x, mu, noise, t, s=None):
        """Euler-Maruyama mean of eq. 7 from t to s (default t - 1): x - [theta'(mu - x) - 2 lambda^2 theta' score]."""
        s = t - 1 if s is None else s
        score = self.score_from_noise(noise, t)
        drift, theta_prime = self._drift(x, mu, score, t, s)
        return x - (drift - 2 * self.lam**2 * theta_prime * score)

    def reverse_sde_step(self, x, mu, noise, t, s=None, generator=None):
        """One Euler-Maruyama step of the IR-SDE (eq. 7); noise sigma sqrt(dt) = sqrt(2 lambda^2 theta')."""
        s = t - 1 if s is None else s
        theta_prime = self._theta_prime(t, s, x)
        dw = (2 * self.lam**2 * theta_prime).sqrt() * _randn(x, generator)
        return self.reverse_sde_mean(x, mu, noise, t, s) + dw

    def reverse_ode_step(self, x, mu, noise, t, s=None):
        """One Euler step of the probability-flow ODE: g^2/2 in place of g^2 (eq. 2 note, eq. 16)."""
        s = t - 1 if s is None else s
        score = self.score_from_noise(noise, t)
        drift, theta_prime = self._drift(x, mu, score, t, s)
        return x - (drift - self.lam**2 * theta_prime * score)

    def posterior_step(self, x, mu, x0, t, s=None, generator=None):
        """Draw x_s ~ p(x_s | x_t, x0) with x0 predicted: mean eq. 14, std section 4."""
        s = t - 1 if s is None else s
        return self.optimal_reverse(x, x0, mu, t, s) + self.posterior_std(t, s, x) * _randn(x, generator)

    # ---- objectives --------------------------------------------------------------------------

    def noise_matching_loss(self, noise_pred, noise):
        """L_gamma of eq. 10 with gamma_i = 1: mean squared error of the predicted noise."""
        return F.mse_loss(noise_pred, noise)

    def ml_loss(self, noise_pred, x, x0, mu, t, weighting="uniform"):
        """J_gamma of eq. 15: L1 between the reverse-SDE mean and x*_{i-1}.

        weighting "uniform" is the reference's gamma_i = 1. "x0" sets gamma_i = 1 / B_i, B_i the
        coefficient of x0 in eq. 14, so that an error in the implied x0 counts the same at every
        step; with gamma_i = 1 the steps near T (B_i ~ eps) hardly train, yet few-step samplers
        lean on the x0 predicted there."""
        error = (self.reverse_sde_mean(x, mu, noise_pred, t) - self.optimal_reverse(x, x0, mu, t)).abs()
        if weighting == "x0":
            if mu is None:  # denoising: x*_{i-1} = A (x_i - x0) + x0, so x0's coefficient is 1 - A
                error = error / (1 - self._reverse_coefficients(t, t - 1, x)[0])
            else:
                error = error / self._reverse_coefficients(t, t - 1, x)[1]
        elif weighting != "uniform":
            raise ValueError(f"unknown ML loss weighting {weighting!r}: choose uniform or x0")
        return error.mean()

    # ---- denoising start (section 4.3) -------------------------------------------------------

    def start_index(self, noise_sigma):
        """t* = argmin_i |theta_bar_i - theta_bar*|, theta_bar* = -1/2 ln(1 - sigma^2 / lambda^2)."""
        if not 0 < noise_sigma < self.lam:
            raise ValueError(f"noise sigma {noise_sigma:.4f} must be in (0, lambda = {self.lam:.4f}); "
                             "both are on the [0, 1] scale (25/255 = 0.098)")
        target = -0.5 * math.log(1 - noise_sigma**2 / self.lam**2)
        return int((self.theta_bar - target).abs().argmin())


# ---- networks and samplers -------------------------------------------------------------------

def noise_model(net, sde, param="noise"):
    """Wrap a network as model(x, mu, t) -> eps. param "noise": it predicts eps (eq. 10).
    param "x0": it predicts a residual r with x0_hat = mu + r (x + r when denoising, mu unknown),
    converted to eps through eq. 6. Anchored at mu, an untrained network already returns the LQ
    image, and the noise in x never has to be cancelled exactly."""
    if param == "noise":
        return net
    if param != "x0":
        raise ValueError(f"unknown parameterisation {param!r}: choose noise or x0")

    def model(x, mu, t):
        return sde.noise_from_x0(x, mu, (x if mu is None else mu) + net(x, mu, t), t)
    return model


def timesteps(sde, steps=None, t_start=None):
    """Decreasing indices t_start = tau_K > ... > tau_0 = 0, evenly spaced (section 7 respacing).
    steps=None (or t_start) takes every index: the reference's T-step loop."""
    t_start = sde.T if t_start is None else t_start
    steps = t_start if steps is None else min(steps, t_start)
    return torch.linspace(t_start, 0, steps + 1, dtype=torch.float64).round().long().tolist()


def _predict(model, sde, x, mu, t, clip_x0):
    """Network call at integer index t -> (eps, x0_hat); clip_x0 projects x0_hat onto [0, 1]."""
    noise = model(x, mu, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    x0 = sde.x0_from_noise(x, mu, noise, t)
    if clip_x0:
        x0 = x0.clamp(0, 1)
        noise = sde.noise_from_x0(x, mu, x0, t)
    return noise, x0


def _start(sde, mu, x_start, generator):
    """x_T = mu + lambda z (section 6; drops the eps (x0 - mu) residual), or the given state."""
    if x_start is not None:
        return x_start
    return mu + sde.lam * _randn(mu, generator)


def sample_sde(model, sde, mu, steps=None, generator=None, callback=None, x_start=None, t_start=None, clip_x0=False):
    """Euler-Maruyama on the reverse IR-SDE (eq. 7); with every index it is the reference's loop."""
    x = _start(sde, mu, x_start, generator)
    ts = timesteps(sde, steps, t_start)
    for t, s in zip(ts[:-1], ts[1:]):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        x = sde.reverse_sde_step(x, mu, noise, t, s, generator)  # Euler-Maruyama step
        if callback is not None:
            callback(s, x)
    return x


def sample_ode(model, sde, mu, steps=None, generator=None, callback=None, x_start=None, t_start=None, clip_x0=False):
    """Euler on the probability-flow ODE of eq. 7 (the denoising ODE, eq. 16, when mu is None)."""
    x = _start(sde, mu, x_start, generator)
    ts = timesteps(sde, steps, t_start)
    for t, s in zip(ts[:-1], ts[1:]):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        x = sde.reverse_ode_step(x, mu, noise, t, s)  # Euler step, no new noise
        if callback is not None:
            callback(s, x)
    return x


def sample_posterior(model, sde, mu, steps=None, generator=None, callback=None, x_start=None, t_start=None, clip_x0=False):
    """Ancestral sampling from p(x_s | x_t, x0_hat) (eq. 14 and its variance; section 7 for s < t - 1)."""
    x = _start(sde, mu, x_start, generator)
    ts = timesteps(sde, steps, t_start)
    for t, s in zip(ts[:-1], ts[1:]):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        x = sde.posterior_step(x, mu, x0, t, s, generator)  # posterior draw; deterministic at s = 0
        if callback is not None:
            callback(s, x)
    return x


def sample_ddim(model, sde, mu, steps=None, generator=None, callback=None, x_start=None, t_start=None, clip_x0=False):
    """Deterministic posterior variant: x_s = m_s(x0_hat) + sqrt(v_s) eps_hat (DDIM, eta = 0; section 7)."""
    x = _start(sde, mu, x_start, generator)
    ts = timesteps(sde, steps, t_start)
    for t, s in zip(ts[:-1], ts[1:]):
        noise, x0 = _predict(model, sde, x, mu, t, clip_x0)
        x = sde.mean(x0, mu, s) + sde.std(s, x) * noise  # reuse eps_hat
        if callback is not None:
            callback(s, x)
    return x


SAMPLERS = {"sde": sample_sde, "ode": sample_ode, "posterior": sample_posterior, "ddim": sample_ddim}


@torch.no_grad()
def sample(model, sde, mu, steps=None, sampler="posterior", **kwargs):
    """Restore mu with the named sampler: sde, ode, posterior or ddim (see each function)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model, sde, mu, steps, **kwargs)


def denoise(model, sde, noisy, noise_sigma, steps=None, sampler="ode", **kwargs):
    """Gaussian denoising (section 4.3): the noisy image is the state at t*; run the reverse
    process from there with mu = x0 unknown (the denoising SDE/ODE, eq. 16)."""
    t_start = sde.start_index(noise_sigma)
    return sample(model, sde, None, steps, sampler, x_start=noisy, t_start=t_start, **kwargs)
