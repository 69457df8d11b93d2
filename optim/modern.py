"""The optimizers the field compares today, as registry specs built from their maintained libraries.

Each builder imports its library on first use (``timm.optim``, ``schedulefree``, ``prodigyopt``,
``torch.optim``), so listing and validating optimizers stays free of torch. The update rules are the
libraries' own; tests/test_modern_optimizers.py checks each build against the library's optimizer
built by hand, and Lion and Schedule-Free against their published rules.

Search spaces follow each paper's or library's advice (cited beside each spec). Hyperparameters keep
the flat names of the classic specs (``beta1``, not ``betas[0]``) so one config key fixes one value.
"""

from __future__ import annotations

from optim.space import Choice, LogUniform, OneMinusLogUniform

# Lion: "the learning rate of Lion is typically 3-10x smaller than that for AdamW ... the value of
# weight decay [...] 3-10x larger" (Chen et al. 2023, "Symbolic Discovery of Optimization
# Algorithms", section 5). AdamW's range here is 1e-5..0.1, so Lion's is 1e-6..1e-2.
_LR_LION = LogUniform(1e-6, 1e-2)
_WD_LION = LogUniform(1e-4, 1.0)
_BETA1 = OneMinusLogUniform(0.5, 0.99)


def _timm(name: str):
    import timm.optim

    return getattr(timm.optim, name)


def muon(params, hp):
    """timm's Muon: conv kernels flattened to (out, in*k*k) and orthogonalized by Newton-Schulz;
    tensors timm finds unsuitable (biases, norms, a stem conv with one input channel) go to its
    AdamW fallback (NAdamW when ``nesterov``) at the same LR. ``adjust_lr_fn=match_rms_adamw``
    (timm's default) scales Muon's update to AdamW's RMS, so one LR serves both."""
    return _timm("Muon")(
        params,
        lr=hp["lr"],
        momentum=hp["momentum"],
        nesterov=hp["nesterov"],
        weight_decay=hp["weight_decay"],
        betas=(hp["beta1"], hp["beta2"]),
    )


def _lr_betas_decay(name: str):
    """A builder for timm's ``name`` taking lr, (beta1, beta2) and weight decay, as Lion, NAdamW
    and LAMB do."""

    def build(params, hp):
        return _timm(name)(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"])

    build.__name__ = build.__qualname__ = name.lower()
    return build


lion = _lr_betas_decay("Lion")
nadamw = _lr_betas_decay("NAdamW")
lamb = _lr_betas_decay("Lamb")


def lars(params, hp):
    return _timm("Lars")(
        params,
        lr=hp["lr"],
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        trust_coeff=hp["trust_coeff"],
        always_adapt=True,  # timm adapts only where weight_decay != 0 unless told: LARS is always LARS here
    )


def adan(params, hp):
    return _timm("Adan")(
        params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"], hp["beta3"]), weight_decay=hp["weight_decay"]
    )


def adafactor(params, hp):
    import torch.optim

    return torch.optim.Adafactor(params, lr=hp["lr"], beta2_decay=hp["beta2_decay"], weight_decay=hp["weight_decay"])


def _training(optimizer):
    """A Schedule-Free optimizer is built in eval mode and refuses to step there: the registry
    hands it over ready to train, like any other (the trial switches it around evaluations)."""
    optimizer.train()
    return optimizer


def sf_sgd(params, hp):
    """Schedule-Free SGD; its own warm-up is off (the schedule's ``warmup_epochs`` does that)."""
    import schedulefree

    return _training(
        schedulefree.SGDScheduleFree(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
    )


def sf_adamw(params, hp):
    import schedulefree

    return _training(
        schedulefree.AdamWScheduleFree(
            params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"]
        )
    )


def prodigy(params, hp):
    """Prodigy estimates the step size D itself: ``lr`` stays 1.0 (a multiplier the schedule
    scales), ``d_coef`` scales D (the knob its README suggests tuning)."""
    import prodigyopt

    return prodigyopt.Prodigy(
        params,
        lr=hp["lr"],
        betas=(hp["beta1"], hp["beta2"]),
        weight_decay=hp["weight_decay"],
        d_coef=hp["d_coef"],
    )


SPACES = {
    # Muon: momentum 0.95 and Nesterov in Keller Jordan's reference and airbench; LR on AdamW's
    # scale through match_rms_adamw (Liu et al. 2025, "Muon is Scalable for LLM Training").
    "muon": {"lr": LogUniform(1e-4, 0.1), "momentum": OneMinusLogUniform(0.8, 0.99), "nesterov": Choice((False, True))},
    "lion": {"lr": _LR_LION, "beta1": _BETA1, "weight_decay": _WD_LION},
    # NAdamW: AdamW's ranges (AlgoPerf's NAdamW baseline searches LR up to 1e-2, log, and 1-beta1
    # log; measured: it diverged at lr 0.07 and 0.08 with an upper end of 0.1). LAMB (You et al.
    # 2020) normalizes each layer's step, so it trains with larger LRs: up to 0.1 here
    "nadamw": {"lr": LogUniform(1e-5, 1e-2), "beta1": _BETA1, "weight_decay": LogUniform(1e-5, 0.1)},
    "lamb": {"lr": LogUniform(1e-4, 0.1), "beta1": _BETA1, "weight_decay": LogUniform(1e-5, 0.1)},
    # LARS (You et al. 2017): SGD-scale LRs times a layer-wise trust ratio (trust_coeff 1e-3)
    "lars": {"lr": LogUniform(1e-2, 10.0), "momentum": OneMinusLogUniform(0.5, 0.99)},
    # Adan (Xie et al. 2022): AdamW-like LRs, somewhat larger; its defaults for betas
    "adan": {"lr": LogUniform(1e-5, 0.1), "weight_decay": LogUniform(1e-5, 0.1)},
    # Adafactor (Shazeer & Stern 2018): relative steps, LR around 1e-2
    "adafactor": {"lr": LogUniform(1e-4, 0.3)},
    # Schedule-Free (Defazio et al. 2024): SGD LRs 10-50x classical SGD's; AdamW's 1-10x AdamW's
    "sf_sgd": {"lr": LogUniform(1e-2, 10.0), "momentum": OneMinusLogUniform(0.5, 0.99)},
    "sf_adamw": {"lr": LogUniform(1e-4, 0.1), "beta1": _BETA1, "weight_decay": LogUniform(1e-5, 0.1)},
    # Prodigy (Mishchenko & Defazio 2024): LR-free; d_coef and weight decay are what is left
    "prodigy": {"d_coef": LogUniform(0.1, 10.0), "weight_decay": LogUniform(1e-5, 0.1)},
}
