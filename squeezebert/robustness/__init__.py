"""Robustness evaluation: text noise (squeezebert.robustness.noise), a HotFlip attack
(squeezebert.robustness.attack) and the CLI `python -m squeezebert.robustness`."""

from squeezebert.robustness.noise import NOISES, noise_text
