"""Fidelity switches: run the method as the paper's text describes it, or as the authors' public code does.

The losses of eq. 4-9 are the same in both; what differs is the machinery around them
(docs/fidelity.md has the full table and the measured effect of each item):

| key              | paper (§4, eq. 8-9 and §3.1 eq. 2)       | official (cantbebetter2/RDD, commit 80883607)               |
|------------------|------------------------------------------|-------------------------------------------------------------|
| queue_layout     | pixels: real l2-normalised teacher pixels | flat_view: `keys.view(C, -1)` of an (N, C, H, W) map, rows mix channels (losses/losses.py) |
| num_contrast (V) | 2,048 (§5.1)                             | 4,096 (the default of `Memory_p2p_loss`, never overridden)  |
| queue_draw       | filled: evenly over the filled part      | whole: round(linspace(0, N_q - 1, V)), random rows included |
| queue_push       | after: push once the loss is computed    | before: the batch is pushed, then the contrast is drawn     |
| queue_wrap       | ring: a FIFO ring buffer                 | public: when ptr + K >= N_q, overwrite the last K rows, ptr = 0 |
| push_scope       | global: K pixels per iteration           | global: K pixels drawn from the batch gathered over ranks   |
| teacher_clip     | true: x-hat clipped in each DDIM step    | false: the two teacher steps of the PD target do not clip   |
| head_bias        | true (the paper is silent; rdd's choice) | false: both 1x1 convs without bias                          |
| head_optimizer   | joint: the student's Adam, schedule, clip | separate: its own Adam at a constant lr, outside the clip  |

`distill.fidelity` picks a column; any individual key set in the config wins over it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FIDELITY_CHOICES = ("paper", "official")

# key -> allowed values (None where the key is a number or a flag)
SWITCH_CHOICES: dict[str, tuple | None] = {
    "queue_layout": ("pixels", "flat_view"),
    "num_contrast": None,
    "queue_draw": ("filled", "whole"),
    "queue_push": ("after", "before"),
    "queue_wrap": ("ring", "public"),
    "push_scope": ("global", "rank"),
    "teacher_clip": None,
    "head_bias": None,
    "head_optimizer": ("joint", "separate"),
}

PRESETS: dict[str, dict] = {
    "paper": dict(queue_layout="pixels", num_contrast=2048, queue_draw="filled", queue_push="after", queue_wrap="ring",
                  push_scope="global", teacher_clip=True, head_bias=True, head_optimizer="joint"),
    "official": dict(queue_layout="flat_view", num_contrast=4096, queue_draw="whole", queue_push="before",
                     queue_wrap="public", push_scope="global", teacher_clip=False, head_bias=False,
                     head_optimizer="separate"),
}


@dataclass(frozen=True)
class Fidelity:
    """The concrete behaviour of one distillation run, every switch resolved."""

    queue_layout: str
    num_contrast: int
    queue_draw: str
    queue_push: str
    queue_wrap: str
    push_scope: str
    teacher_clip: bool
    head_bias: bool
    head_optimizer: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_fidelity(distill_cfg) -> Fidelity:
    """The preset named by `distill.fidelity`, with every individual key that is set (not null) on top."""
    values = dict(PRESETS[distill_cfg.fidelity])
    for key in SWITCH_CHOICES:
        explicit = getattr(distill_cfg, key)
        if explicit is not None:
            values[key] = explicit
    return Fidelity(**values)
