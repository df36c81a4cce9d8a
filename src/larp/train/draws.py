"""Random draws of a training step given instead of drawn: replaying another implementation's run.

Training draws codes (the stochastic quantiser), the prior's scheduled-sampling mask and picks, the
discriminator's label noise and the AR model's class-label dropout. `GivenDraws` replaces each of them by
a given value or by the argmax, so that a step is a pure function of its inputs: the reference-parity tests
use it to compare larp's training with the reference implementation's step for step. A task takes it as
`draws=`; without it every draw is random, as in a real run."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GivenDraws:
    """Draws of a run, indexed by the step number (counted from 1) or, for the discriminator's label noise,
    by its update (the k-th update takes row k-1). A field left None is drawn at random as usual."""

    argmax_codes: bool = False  # tokenizer: the most similar code instead of a draw from softmax(cos / tau)
    argmax_picks: bool = False  # tokenizer prior: the most likely code as the scheduled-sampling pick
    ss_masks: torch.Tensor | None = None  # (steps, B, N-1): the scheduled-sampling mask of each step
    d_noise_real: torch.Tensor | None = None  # (updates, B): standard normals of the real labels' noise
    d_noise_fake: torch.Tensor | None = None  # (updates, B): the same for the fake labels
    class_drop: torch.Tensor | None = None  # AR: (steps, B), 1 where the label becomes the null class

    @staticmethod
    def _row(table: torch.Tensor | None, index: int, what: str) -> torch.Tensor | None:
        if table is None:
            return None
        if not 0 <= index < len(table):
            raise IndexError(f"no given {what} for row {index}: {len(table)} rows were given")
        return table[index]

    def ss_mask(self, step: int) -> torch.Tensor | None:
        """The scheduled-sampling mask (B, N-1) of step `step` (from 1), or None to draw it."""
        return self._row(self.ss_masks, step - 1, "scheduled-sampling mask")

    def d_noise(self, update: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The label noise (real, fake) of the discriminator's `update`-th update (from 1), or None."""
        real = self._row(self.d_noise_real, update - 1, "real label noise")
        fake = self._row(self.d_noise_fake, update - 1, "fake label noise")
        if (real is None) != (fake is None):
            raise ValueError("give both d_noise_real and d_noise_fake, or neither")
        return None if real is None else (real, fake)

    def class_drop_mask(self, step: int) -> torch.Tensor | None:
        """The class-label drop mask (B,) of step `step` (from 1), or None to draw it."""
        return self._row(self.class_drop, step - 1, "class-drop mask")
