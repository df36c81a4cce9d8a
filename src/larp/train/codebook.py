"""Codebook health and anti-collapse options for training the LARP tokenizer.

Small tokenizers trained with the released recipe collapse onto one or two codes and a decoder that outputs
the mean video (docs/studies/small_scale_recipes.md). This module holds what a trainer needs to see and to prevent
that:

- `CodebookMonitor`: usage (fraction of codes hit in the last `window` steps), perplexity, dead codes, and a
  logged warning when usage falls below a threshold. Always on; costs one bincount per step.
- `init_codebook_from_encoder`, `reinit_dead_codes`: put codes where the encoder's outputs are.
- `temperature_at` / `set_temperature`: an annealed sampling temperature for the stochastic quantiser.
- `apply_init`: initialisation options for small presets (non-zero output layer, wider latent queries).
- `CodebookOptions` + `AntiCollapse`: the options as one typed config block (all off by default, so the
  released recipe is unchanged) and the object a trainer calls once at the start and once per step.

None of these change a model's module names or its forward numerics: they set parameter values through the
quantiser's own codebook operations (`StochasticVQ.init_codebook`, `replace_codes`, `set_temperature`)."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from larp.models.quantizer import StochasticVQ, pick_rows, spherical_kmeans
from larp.models.tokenizer import LARPTokenizer
from larp.train.local_init import local_linear_init

__all__ = ["AntiCollapse", "CodebookMonitor", "CodebookOptions", "apply_init", "init_codebook_from_encoder",
           "quantizer_of", "reinit_dead_codes", "set_temperature", "spherical_kmeans", "temperature_at"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------------------


class CodebookMonitor:
    """Code-usage statistics over the last `window` steps.

    Call `update(indices)` once per training step with the step's code indices (any shape). `usage()` is the
    fraction of the K codes hit at least once in the window, `perplexity()` is exp(entropy) of the window's
    code histogram (K when uniform, 1 when collapsed), `dead_codes(n)` marks codes unused for n steps."""

    def __init__(self, codebook_size: int, window: int = 100, warn_below: float = 0.05,
                 logger: logging.Logger | None = None):
        if codebook_size < 1 or window < 1:
            raise ValueError(f"CodebookMonitor: expected codebook_size >= 1 and window >= 1, "
                             f"got {codebook_size} and {window}")
        if not 0.0 <= warn_below <= 1.0:
            raise ValueError(f"CodebookMonitor: warn_below is a fraction in [0, 1], got {warn_below}")
        self.codebook_size = codebook_size
        self.window = window
        self.warn_below = warn_below
        self.logger = logger or log
        self.step = 0  # number of updates seen
        self._recent: deque[torch.Tensor] = deque(maxlen=window)  # per-step histograms (K,) int64, on CPU
        self.last_hit = torch.full((codebook_size,), -1, dtype=torch.long)  # update count when last hit
        self._warned = False

    def update(self, indices: torch.Tensor) -> None:
        flat = indices.detach().reshape(-1).long().cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size):
            raise ValueError(f"CodebookMonitor: code indices must lie in [0, {self.codebook_size}), "
                             f"got [{int(flat.min())}, {int(flat.max())}]")
        counts = torch.bincount(flat, minlength=self.codebook_size)
        self._recent.append(counts)
        self.last_hit[counts > 0] = self.step
        self.step += 1

    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume the statistics exactly (saved in training checkpoints)."""
        recent = torch.stack(list(self._recent)) if self._recent else torch.zeros(0, self.codebook_size,
                                                                                  dtype=torch.long)
        return {"step": self.step, "recent": recent, "last_hit": self.last_hit.clone(), "warned": self._warned}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step = int(state["step"])  # type: ignore[arg-type]
        self._recent = deque(list(state["recent"]), maxlen=self.window)  # type: ignore[arg-type]
        self.last_hit = state["last_hit"].clone()  # type: ignore[union-attr]
        self._warned = bool(state["warned"])

    def counts(self) -> torch.Tensor:
        """(K,) how often each code was chosen in the window."""
        if not self._recent:
            return torch.zeros(self.codebook_size, dtype=torch.long)
        return torch.stack(list(self._recent)).sum(0)

    def usage(self) -> float:
        return float((self.counts() > 0).float().mean())

    def perplexity(self) -> float:
        c = self.counts().double()
        total = c.sum()
        if total == 0:
            return 0.0
        p = c[c > 0] / total
        return float(torch.exp(-(p * p.log()).sum()))

    def dead_codes(self, unused_steps: int) -> torch.Tensor:
        """(K,) bool: codes not chosen in the last `unused_steps` updates (never-hit codes included)."""
        return self.last_hit <= self.step - 1 - unused_steps

    def stats(self) -> dict[str, float]:
        """Usage, perplexity and codes used in the window; logs a warning once per dip below the threshold."""
        usage = self.usage()
        out = {"codebook_usage": usage, "codebook_perplexity": self.perplexity(),
               "codes_used": float((self.counts() > 0).sum())}
        if usage < self.warn_below and self.step >= self.window:
            if not self._warned:
                self.logger.warning(
                    "codebook collapse: %.1f%% of %d codes used in the last %d steps (threshold %.1f%%); "
                    "consider the anti-collapse options (dead-code re-initialisation, entropy loss, "
                    "temperature annealing)", 100 * usage, self.codebook_size, self.window, 100 * self.warn_below)
                self._warned = True
        else:
            self._warned = False
        return out


# ---------------------------------------------------------------------------------------------------------
# Codebook placement
# ---------------------------------------------------------------------------------------------------------


def quantizer_of(model: LARPTokenizer) -> StochasticVQ:
    """The tokenizer's quantiser, whose codebook operations the trainer calls."""
    return model.bottleneck.regularizer


def _unit_latents(model: LARPTokenizer, videos: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*N, d) unit vectors that the quantiser would see."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        z = model.bottleneck.project(model.encode_continuous(videos))
    model.train(was_training)
    return z.reshape(-1, z.shape[-1])


def init_codebook_from_encoder(model: LARPTokenizer, videos: torch.Tensor, noise: float = 0.05,
                               generator: torch.Generator | None = None, kmeans_iters: int = 0) -> None:
    """Set every codebook row to an encoder output (unit vector, plus `noise`) of `videos`, then refine the
    rows with `kmeans_iters` spherical k-means iterations over those outputs.

    With random codes most of a 16-d sphere is far from where the encoder's outputs lie, so only a few codes
    are ever sampled; starting the codes on the outputs gives each one a chance. k-means then spreads them so
    that the outputs are quantised with less distortion."""
    quantizer_of(model).init_codebook(_unit_latents(model, videos), noise, generator, kmeans_iters)


def reinit_dead_codes(model: LARPTokenizer, dead: torch.Tensor, latents: torch.Tensor, noise: float = 0.05,
                      generator: torch.Generator | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> int:
    """Move the codes marked in `dead` (K,) bool onto random rows of `latents` (..., d); returns how many.

    `latents` are recent encoder outputs after the bottleneck projection (unit vectors). When `optimizer`
    is given, its per-parameter state (Adam moments) is zeroed for those rows so that stale momentum does
    not drag the new codes away."""
    quantizer = quantizer_of(model)
    k, d = quantizer.codebook_size, quantizer.dim
    if dead.shape != (k,) or dead.dtype != torch.bool:
        raise ValueError(f"reinit_dead_codes: expected a bool mask of shape ({k},), "
                         f"got {dead.dtype} {tuple(dead.shape)}")
    n = int(dead.sum())
    if n == 0:
        return 0
    z = latents.detach().reshape(-1, latents.shape[-1])
    if z.shape[-1] != d:
        raise ValueError(f"reinit_dead_codes: latents must have the codebook's width {d}, got {z.shape[-1]}")
    quantizer.replace_codes(dead, pick_rows(z, n, noise, generator), optimizer)
    return n


# ---------------------------------------------------------------------------------------------------------
# Sampling temperature
# ---------------------------------------------------------------------------------------------------------


def temperature_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Geometric (log-linear) anneal from `start` to `end` over `anneal_steps`, then `end`.

    Geometric because the softmax's sharpness scales with 1/temperature. anneal_steps <= 0 gives `end`."""
    if start <= 0 or end <= 0:
        raise ValueError(f"temperatures must be positive, got start={start}, end={end}")
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    frac = max(step, 0) / anneal_steps
    return math.exp(math.log(start) + frac * (math.log(end) - math.log(start)))


def set_temperature(model: LARPTokenizer, temperature: float) -> None:
    """Set the stochastic quantiser's sampling temperature (not part of the state dict)."""
    quantizer_of(model).set_temperature(temperature)


# ---------------------------------------------------------------------------------------------------------
# Initialisation for small presets
# ---------------------------------------------------------------------------------------------------------


def apply_init(model: LARPTokenizer, final_layer_std: float | None = None, query_std: float | None = None,
               generator: torch.Generator | None = None) -> None:
    """Re-initialise parts of a freshly built tokenizer; None leaves a part as released.

    final_layer_std: normal(0, std) weights for `final_layer.linear` instead of zeros. With the zero
        output layer only that layer receives gradient at first and the encoder's gradients are ~1e-6, so
        a small model spends its whole budget reproducing the mean video.
    query_std: std of `encoder_latent_query_embed` (released 0.02). Nearly identical queries attend alike
        and give nearly identical tokens, hence one code for all of them."""
    with torch.no_grad():
        if final_layer_std is not None:
            w = model.final_layer.linear.weight
            w.copy_(torch.randn(w.shape, generator=generator) * final_layer_std)
        if query_std is not None:
            q = model.encoder_latent_query_embed
            q.copy_(torch.randn(q.shape, generator=generator) * query_std)


# ---------------------------------------------------------------------------------------------------------
# One config block and one object for the trainer
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CodebookOptions:
    """Codebook monitoring and anti-collapse options (YAML block). Defaults = the released recipe."""

    monitor_window: int = 100  # steps over which usage and perplexity are counted
    warn_below_usage: float = 0.05  # log a warning when usage falls below this fraction
    final_layer_init_std: float | None = None  # None: zero-initialised output layer (released)
    query_init_std: float | None = None  # None: as the model config says (released 0.02)
    local_linear_init: bool = False  # start as a per-patch linear autoencoder (larp.train.local_init)
    init_from_encoder: bool = False  # codebook rows := encoder outputs of the first batches
    init_kmeans_iters: int = 0  # then this many spherical k-means iterations over those outputs
    dead_code_steps: int = 0  # >0: re-initialise codes unused for this many steps (checked every step)
    reinit_noise: float = 0.05
    temperature_start: float | None = None  # None: the config's stochastic_temperature throughout
    temperature_anneal_steps: int = 0

    def validate(self) -> None:
        if self.monitor_window < 1:
            raise ValueError(f"codebook.monitor_window must be >= 1, got {self.monitor_window}")
        if self.dead_code_steps < 0 or self.temperature_anneal_steps < 0 or self.init_kmeans_iters < 0:
            raise ValueError("codebook.dead_code_steps, codebook.temperature_anneal_steps and "
                             "codebook.init_kmeans_iters must be >= 0")
        if self.temperature_start is not None and not self.temperature_start > 0:
            raise ValueError(f"codebook.temperature_start must be positive, got {self.temperature_start}")
        if not 0.0 <= self.warn_below_usage <= 1.0:
            raise ValueError(f"codebook.warn_below_usage must be in [0, 1], got {self.warn_below_usage}")
        if not self.reinit_noise >= 0:
            raise ValueError(f"codebook.reinit_noise must be >= 0, got {self.reinit_noise}")
        for name in ("final_layer_init_std", "query_init_std"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"codebook.{name} must be > 0 (or null), got {value}")


class AntiCollapse:
    """Applies `CodebookOptions` to one tokenizer during training.

        ac = AntiCollapse(model, options)
        ac.setup(first_videos)                 # once, before the first step (init options)
        ... out = model(video, step, total); loss.backward(); opt.step()
        stats = ac.after_step(step, out.indices, optimizer=opt)   # every step; returns numbers to log

    `before_step(step)` sets the annealed temperature. The encoder outputs needed for dead-code
    re-initialisation are captured by a forward hook on the quantiser, so no extra forward pass runs; with
    gradient accumulation, the outputs of all the step's micro-batches are kept. `close()` removes the hook
    (`before_step` puts it back)."""

    def __init__(self, model: LARPTokenizer, options: CodebookOptions | None = None,
                 generator: torch.Generator | None = None):
        self.model = model
        self.options = options or CodebookOptions()
        self.options.validate()
        self.generator = generator
        self.monitor = CodebookMonitor(model.codebook_size, self.options.monitor_window,
                                       self.options.warn_below_usage)
        self.end_temperature = model.config.vq.stochastic_temperature
        self.reinitialised = 0  # total codes re-initialised
        self.init_report: dict[str, float] = {}  # what local_linear_init achieved
        self._latents: list[torch.Tensor] = []  # the quantiser's inputs since the step began
        self._hook = None
        self._attach()

    def _attach(self) -> None:
        if self.options.dead_code_steps > 0 and self._hook is None:
            self._hook = quantizer_of(self.model).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: object) -> None:
        self._latents.append(inputs[0].detach())

    def setup(self, videos: torch.Tensor | Iterable[torch.Tensor] | None = None) -> None:
        o = self.options
        apply_init(self.model, o.final_layer_init_std, o.query_init_std, self.generator)
        asked = [name for name in ("local_linear_init", "init_from_encoder") if getattr(o, name)]
        if not asked:
            return
        if videos is None:
            raise ValueError(" and ".join(f"codebook.{name}" for name in asked)
                             + " needs videos passed to AntiCollapse.setup")
        batch = videos if isinstance(videos, torch.Tensor) else torch.cat(list(videos))
        if o.local_linear_init:
            self.init_report = local_linear_init(self.model, batch, generator=self.generator)
            log.info("local linear init: routing %.3f (encoder), %.3f (decoder)",
                     self.init_report["routing_encoder"], self.init_report["routing_decoder"])
            if self.init_report["routing_decoder"] < 0.5:
                # The decoder's patch queries find their latents through the 1-D latent position embedding,
                # which must tell all N latents apart (measured: base 0.1 for 64 latents, 0.05 for 128).
                log.warning("local linear init routed the decoder at %.2f (about 1 expected): its latent position "
                            "embedding does not tell the %d latents apart; try a smaller "
                            "model.config.latent_pe_scale_factor (now %g)", self.init_report["routing_decoder"],
                            self.model.config.bottleneck_token_num, self.model.config.latent_pe_scale_factor)
        if o.init_from_encoder:
            init_codebook_from_encoder(self.model, batch, o.reinit_noise, self.generator, o.init_kmeans_iters)

    def before_step(self, step: int) -> float:
        o = self.options
        t = (self.end_temperature if o.temperature_start is None
             else temperature_at(step, o.temperature_start, self.end_temperature, o.temperature_anneal_steps))
        set_temperature(self.model, t)
        self._latents = []
        self._attach()
        return t

    def after_step(self, step: int, indices: torch.Tensor,
                   optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        self.monitor.update(indices)
        n = 0
        o = self.options
        if o.dead_code_steps > 0 and self._latents and self.monitor.step >= o.dead_code_steps:
            dead = self.monitor.dead_codes(o.dead_code_steps)
            latents = self._latents[0] if len(self._latents) == 1 else torch.cat(self._latents)
            n = reinit_dead_codes(self.model, dead, latents, o.reinit_noise, self.generator, optimizer)
            # Re-initialised codes get a fresh grace period.
            self.monitor.last_hit[dead] = self.monitor.step - 1
            self.reinitialised += n
        stats = self.monitor.stats()
        stats["codes_reinitialised"] = float(n)
        stats["temperature"] = float(quantizer_of(self.model).temperature)
        self._latents = []
        return stats

    def state_dict(self) -> dict[str, object]:
        return {"monitor": self.monitor.state_dict(), "reinitialised": self.reinitialised}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.monitor.load_state_dict(state["monitor"])  # type: ignore[arg-type]
        self.reinitialised = int(state["reinitialised"])  # type: ignore[arg-type]

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
