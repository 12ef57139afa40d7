"""One meaning of "temperature" in every bundle: the softmax/sigmoid temperature tau, logits = similarity / tau.

CLIP (Radford et al., 2021) initialises tau = 0.07, i.e. a logit scale 1/tau = 14.3; CT-CLIP learns
log(1/tau) from 1.0 (tau = 1/e); the label-aware pairwise loss of the frozen-projection paper uses a fixed
tau = 0.1. Config keys named ``temperature`` (fixed) or ``temperature_init`` (learned) always hold tau, never
its inverse or its log, and are checked here so that a logit scale passed by mistake is refused, not trained.
"""

from __future__ import annotations

import math

__all__ = ["MIN_TEMPERATURE", "MAX_TEMPERATURE", "check_temperature"]

# Published contrastive temperatures lie between 0.01 (SigLIP's learned end point) and 0.5; 1e-3 and 1.0 leave
# room for experiments while still catching the two common mix-ups: a logit scale (14.3, 100) or its log (2.66).
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1.0


def check_temperature(value: float, name: str = "temperature") -> float:
    """Return ``value`` as a float if it is a sane temperature tau; otherwise raise a ``ValueError`` that says why.

    Args:
        value: the temperature tau (logits = similarity / tau).
        name: the config key, named in the error.
    """
    tau = float(value)
    if not math.isfinite(tau) or not MIN_TEMPERATURE <= tau <= MAX_TEMPERATURE:
        hint = (
            f"; {tau:g} looks like a logit scale 1/tau: pass tau = {1 / tau:.4g} instead"
            if math.isfinite(tau) and tau > MAX_TEMPERATURE
            else ""
        )
        raise ValueError(
            f"{name}={value!r} is outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]: it is the temperature tau "
            f"(logits = similarity / tau; CLIP uses 0.07){hint}"
        )
    return tau
