"""Self-critical sequence training (SCST): REINFORCE with a CIDEr-D reward and a baseline, in two published forms.

- `mode: sample` (Rennie et al. 2017, "Self-critical Sequence Training for Image Captioning"; ruotianluo/
  self-critical.pytorch): `num_samples` captions sampled per image; the baseline is the reward of the greedy caption
  (`baseline: greedy`, Rennie et al.) or the mean reward of the image's other samples (`baseline: leave_one_out`:
  Kool et al. 2019's leave-one-out baseline, Luo 2020's "better variant of SCST", self-critical.pytorch's
  `new_self_critical`). The reward counts <eos>; references cut as the data cuts them, document frequencies over
  the training images.
- `mode: beam` (Anderson et al. 2018's own code, peteanderson80/Up-Down-Captioner `scst_net.prototxt` and
  `layers/scst_layers.py` `SCSTLayer`): the `num_samples` (5) captions of a beam search per image, decoded without
  dropout and with Up-Down's repeat rules; each weighted by its CIDEr-D minus the mean CIDEr-D of the image's beams;
  the gradient is that of the teacher-forced log-likelihood of each beam caption (words and <eos>), computed without
  dropout (Up-Down's nets have none). The reward is SCSTLayer's: captions cut at the end token, which is no word
  (`include_eos=False`), scored against the full reference captions, document frequencies over every image with
  references (train2014 + val2014 there: all splits here).

Each of these is a field of `SelfCriticalOptions` whose default (None) is the mode's reference.
In both, the loss is -sum(advantage * log p(token)) over the emitted tokens (words and <eos>) divided by their count:
SCSTLayer's weighted SoftmaxWithLoss with its VALID normalisation (its `loss_weight: 20` is a learning-rate factor,
left to the optimiser's settings). Sampling decodes with the options here, not the evaluation's (`block_trigrams`,
`suppress_unk`, `min_length` of `model.decoding` do not leak into training), and a sampled token's log-probability is
under the distribution it was drawn from (see `vqacap.models.decoding.sample`).

Shapes: B images, G captions per image, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqacap.data.vocab import BOS_ID, PAD_ID
from vqacap.models.decoding import DecodingOptions

MODES = ("sample", "beam")
BASELINES = {"sample": ("greedy", "leave_one_out"), "beam": ("beam_mean",)}
DOCUMENT_FREQUENCIES = ("train", "all")
# The defaults of the options left None, per mode: Rennie et al. / ruotianluo (sample), SCSTLayer (beam).
MODE_DEFAULTS = {
    "sample": {
        "count_eos": True,
        "full_references": False,
        "document_frequencies": "train",
        "prevent_repeats": False,
        "single_use": False,
    },
    "beam": {
        "count_eos": False,
        "full_references": True,
        "document_frequencies": "all",
        "prevent_repeats": True,
        "single_use": True,
    },
}


@dataclass(frozen=True)
class SelfCriticalOptions:
    """`model.scst` of the configs; validated at construction (a bad value is one line naming the field)."""

    mode: str = "sample"  # "sample": Rennie et al. 2017; "beam": Anderson et al. 2018's code
    num_samples: int = 5  # captions per image: samples (sample) or beams (beam)
    baseline: str | None = (
        None  # sample: "greedy" (default) | "leave_one_out"; beam: "beam_mean" (the only one)
    )
    temperature: float = 1.0  # sampling temperature (sample mode)
    max_length: int | None = None  # words; None: the evaluation decoding's, which is the data's max_length
    min_length: int = 0
    block_trigrams: bool = False
    suppress_unk: bool = False
    # None: the mode's reference (MODE_DEFAULTS).
    count_eos: bool | None = None  # the reward counts <eos> as a word (CiderDReward)
    full_references: bool | None = None  # the reward's references uncut, not cut to max_length as the data's
    document_frequencies: str | None = None  # "train": over the training images; "all": over every split's
    # Up-Down's repeat rules (vqacap.models.decoding.DecodingOptions) on the captions trained on.
    prevent_repeats: bool | None = None
    single_use: bool | None = None
    beam_dropout: bool = False  # beam mode: dropout in the gradient pass (Up-Down's nets have none)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"model.scst.mode: expected one of {MODES}, got {self.mode!r}")
        if self.baseline is None:
            object.__setattr__(self, "baseline", BASELINES[self.mode][0])
        for name, value in MODE_DEFAULTS[self.mode].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.document_frequencies not in DOCUMENT_FREQUENCIES:
            raise ValueError(
                f"model.scst.document_frequencies: expected one of {DOCUMENT_FREQUENCIES}, "
                f"got {self.document_frequencies!r}"
            )
        if self.beam_dropout and self.mode != "beam":
            raise ValueError("model.scst.beam_dropout: only mode 'beam' has a separate gradient pass")
        if self.baseline not in BASELINES[self.mode]:
            raise ValueError(
                f"model.scst.baseline: mode {self.mode!r} takes one of {BASELINES[self.mode]}, got {self.baseline!r}"
            )
        if int(self.num_samples) < 1:
            raise ValueError(f"model.scst.num_samples: expected at least 1, got {self.num_samples}")
        if self.baseline in ("leave_one_out", "beam_mean") and self.num_samples < 2:
            raise ValueError(
                f"model.scst.num_samples: the {self.baseline!r} baseline needs at least 2 per image"
            )
        if not self.temperature > 0:
            raise ValueError(f"model.scst.temperature: expected a positive number, got {self.temperature}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"model.scst.max_length: expected at least 1, got {self.max_length}")

    def decoding(self, max_length: int, allowed_multiple: tuple[int, ...] = ()) -> DecodingOptions:
        """The decoding options of the captions trained on (`max_length` where the options leave it unset;
        `allowed_multiple`: the ids `single_use` lets repeat)."""
        return DecodingOptions(
            beam_size=self.num_samples if self.mode == "beam" else 1,
            max_length=self.max_length or max_length,
            min_length=self.min_length,
            block_trigrams=self.block_trigrams,
            suppress_unk=self.suppress_unk,
            temperature=self.temperature,
            prevent_repeats=self.prevent_repeats,
            single_use=self.single_use,
            allowed_multiple=allowed_multiple,
        )


def baseline(rewards: torch.Tensor, kind: str, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """rewards (B, G) -> the baseline of each caption (B, G).

    greedy: the greedy caption's reward (B,) or (B, 1), for kind "greedy". "leave_one_out": the mean reward of the
    image's other captions. "beam_mean": the mean reward of all the image's captions, the caption's own included
    (Up-Down-Captioner's SCSTLayer).
    """
    if kind == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return greedy.reshape(-1, 1).expand_as(rewards)
    if kind == "leave_one_out":
        return (rewards.sum(1, keepdim=True) - rewards) / (rewards.size(1) - 1)
    if kind == "beam_mean":
        return rewards.mean(1, keepdim=True).expand_as(rewards)
    raise ValueError(f"unknown self-critical baseline {kind!r}")


def self_critical_loss(
    log_probs: torch.Tensor, tokens: torch.Tensor, rewards: torch.Tensor, baselines: torch.Tensor
) -> torch.Tensor:
    """-sum over emitted tokens of (reward - baseline) * log p(token), over the number of emitted tokens.

    log_probs (B, G, T) of the tokens (B, G, T) (words, <eos>, then <pad>, which adds nothing); rewards and
    baselines (B, G), constants.
    """
    advantage = (rewards - baselines).detach().unsqueeze(-1)  # (B, G, 1)
    emitted = (tokens != PAD_ID).to(log_probs.dtype)
    return -(advantage * log_probs * emitted).sum() / emitted.sum().clamp(min=1.0)


def teacher_forced_log_probs(
    net, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """log p of each of the captions' tokens (B, G, T) under the model, by teacher forcing (with <bos> prepended);
    0 at <pad>."""
    inputs = torch.cat([torch.full_like(tokens[..., :1], BOS_ID), tokens], -1)  # (B, G, T + 1)
    logits, _ = net(regions, mask, inputs)  # (B, G, T, V)
    log_probs = torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return log_probs.masked_fill(tokens == PAD_ID, 0.0)
