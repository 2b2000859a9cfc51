"""Caption decoding for any captioner: greedy, sampling and beam search, batched over images x hypotheses.

Dims: B images, G hypotheses per image (samples or beams), K regions, V vocabulary, T decoded tokens.

A captioner is anything that implements `Captioner` (`start`, `step` and teacher-forced `__call__`); the decoders
reach the model only through it. Hypotheses of one image share the image context by broadcasting: region features are
never copied per beam. There is no per-image Python loop; the only loop is over time, and it stops once every
hypothesis has emitted <eos> (on a GPU a step or two later, without waiting for the device: `AllEnded`). Every function
returns the per-step attention weights with the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn

from vqacap.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

State = tuple[torch.Tensor, ...]  # every tensor (B, G, ...): the recurrent state of G hypotheses per image


class Captioner(Protocol):
    """What decoding and training need from a captioning model."""

    def start(self, regions: torch.Tensor, mask: torch.Tensor) -> tuple[Any, State]:
        """regions (B, K, D), mask (B, K) True for real regions -> (context, state for G = 1).

        The context holds per-image tensors shared by every hypothesis of the image; decoding never looks into it.
        """
        ...

    def step(
        self, context: Any, state: State, tokens: torch.Tensor, eval_rows: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """tokens (B, G), the previous token of each hypothesis -> logits (B, G, V), attention (B, G, K), new state.

        eval_rows: the last `eval_rows` hypotheses are computed as in eval mode (no dropout): the greedy baseline
        decoded beside the self-critical samples (`sample_with_greedy`).
        """
        ...

    def __call__(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: tokens (B, G, T) or (B, T) -> logits (B, G, T-1, V), attention (B, G, T-1, K)."""
        ...


def _rebuild(state: State, tensors) -> State:
    tensors = list(tensors)
    return type(state)(*tensors) if hasattr(state, "_fields") else tuple(tensors)  # a NamedTuple or a tuple


def expand_state(state: State, g: int) -> State:
    """(B, 1, ...) -> (B, g, ...): every hypothesis starts from the image's state."""
    return _rebuild(state, (t.expand(-1, g, *t.shape[2:]).contiguous() for t in state))


def select_state(state: State, index: torch.Tensor) -> State:
    """Reorder hypotheses: index (B, G') of the hypotheses to keep, per image."""
    return _rebuild(state, (_gather(t, index) for t in state))


def dropout_rows(dropout: nn.Module, h: torch.Tensor, eval_rows: int) -> torch.Tensor:
    """dropout(h) for h (B, G, ...), except the last `eval_rows` hypotheses, which pass as in eval mode."""
    if eval_rows and dropout.training:
        cut = h.size(1) - eval_rows
        return torch.cat([dropout(h[:, :cut]), h[:, cut:]], 1)
    return dropout(h)


def teacher_forcing(
    model: Captioner, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The captioner's `forward` written with `start` and `step`: tokens (B, G, T) or (B, T) = <bos> w_1 .. <eos> <pad>.

    Returns logits (B, G, T-1, V) predicting tokens[..., 1:] and attention weights (B, G, T-1, K), without the G axis
    for (B, T) tokens.
    """
    single = tokens.dim() == 2
    if single:
        tokens = tokens.unsqueeze(1)
    context, state = model.start(regions, mask)
    state = expand_state(state, tokens.size(1))
    logits, attention = [], []
    for word in tokens[..., :-1].unbind(2):  # (B, G) each; unbound, not indexed: one backward for all steps
        step_logits, alpha, state = model.step(context, state, word)
        logits.append(step_logits)
        attention.append(alpha)
    logits, attention = torch.stack(logits, 2), torch.stack(attention, 2)  # (B, G, T-1, V), (B, G, T-1, K)
    return (logits.squeeze(1), attention.squeeze(1)) if single else (logits, attention)


NEG_INF = float("-inf")

# The words Up-Down's beam search lets a caption use more than once (`allowed_multiple` of the BeamSearch layers in
# Up-Down-Captioner's decoder.prototxt and scst_net.prototxt: ids 2 5 4 15 3 6 8 7 9 13 277 11 30 16 19 27 25 119 48
# of its data/coco_splits/train_vocab.txt, in that order). Every other word may appear once (`single_use`).
ALLOWED_MULTIPLE = (
    "a", "the", "of", ",", "on", "in", "and", "with", "is", "an", '"', "to", "some", "at", "are", "it", "that", "'",
    "by",
)  # fmt: skip


def allowed_multiple_ids(words: list[str]) -> tuple[int, ...]:
    """The ids of ALLOWED_MULTIPLE in the id -> word list `words` (words a vocabulary lacks are left out)."""
    index = {w: i for i, w in enumerate(words)}
    return tuple(index[w] for w in ALLOWED_MULTIPLE if w in index)


@dataclass
class DecodingOptions:
    """Beam 5, no length penalty, no blocking, no minimum length, <unk> allowed; Up-Down's repeat rules
    (`prevent_repeats`, `single_use`) are off here and on in the recipes that follow the paper (the COCO ones)."""

    beam_size: int = 5
    max_length: int = 16  # words, <eos> excluded
    length_penalty: float = 0.0  # GNMT alpha: hypotheses ranked by log p / ((5 + len) / 6) ** alpha
    min_length: int = 0  # <eos> is forbidden before this many words
    block_trigrams: bool = False  # forbid repeating a trigram within a caption
    suppress_unk: bool = False
    temperature: float = 1.0  # sampling temperature
    # Up-Down's BeamSearch (`_forbid_repeats`): no word twice in a row; no second use of a word outside
    # `allowed_multiple`, the ids of the words that may repeat (allowed_multiple_ids(words)).
    prevent_repeats: bool = False
    single_use: bool = False
    allowed_multiple: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Checked here, where the config is read, not at the first decoding step after an epoch of training.
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,)}
        for option in fields(self):
            value = getattr(self, option.name)
            allowed = kinds.get(str(option.type))
            if allowed is None:  # a type of its own, checked where it is used
                continue
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise DecodingOptionError(f"decoding.{option.name}={value!r}: expected {option.type}")
        for name in ("beam_size", "max_length"):
            if getattr(self, name) < 1:
                raise DecodingOptionError(f"decoding.{name}={getattr(self, name)}: expected at least 1")
        if self.temperature <= 0:
            raise DecodingOptionError(f"decoding.temperature={self.temperature}: expected a positive number")


class DecodingOptionError(ValueError):
    """A decoding option of the wrong type or range (one line naming the option)."""


@dataclass
class Decoded:
    tokens: torch.Tensor  # (B, G, T) words, then <eos>, then <pad>
    attention: torch.Tensor  # (B, G, T, K) attention weights at each emitted token
    log_probs: torch.Tensor  # (B, G, T) log-probability of each emitted token (0 after <eos>)
    scores: torch.Tensor  # (B, G) ranking score (summed log-probs, length-penalised for beams)
    extra: dict = field(default_factory=dict)

    def best(self) -> Decoded:
        """Keep the first hypothesis of each image (beams are sorted best first): tensors keep G = 1."""
        return self.hypotheses(slice(None, 1))

    def hypotheses(self, index: slice) -> Decoded:
        """The hypotheses `index` of each image (a slice of the G axis)."""
        return Decoded(
            self.tokens[:, index], self.attention[:, index], self.log_probs[:, index], self.scores[:, index]
        )


def _constrain(logp: torch.Tensor, t: int, opts: DecodingOptions) -> torch.Tensor:
    """Mask tokens that may not be emitted at step t (t = number of words so far). logp (B, G, V)."""
    logp = logp.clone()
    logp[..., PAD_ID] = NEG_INF
    logp[..., BOS_ID] = NEG_INF
    if opts.suppress_unk:
        logp[..., UNK_ID] = NEG_INF
    if t < opts.min_length:
        logp[..., EOS_ID] = NEG_INF
    if t >= opts.max_length:  # out of room: only <eos> remains (at its own log-probability)
        eos = logp[..., EOS_ID].clone()
        logp[...] = NEG_INF
        logp[..., EOS_ID] = eos
    return logp


def _forbid_repeats(logp: torch.Tensor, history: torch.Tensor, opts: DecodingOptions) -> torch.Tensor:
    """Up-Down's constraint (peteanderson80/caffe base_beam_search_layer.cu, `UpdateScore`): with `prevent_repeats`
    no word may follow itself; with `single_use` no word already in the caption may come again unless it is in
    `opts.allowed_multiple`. history (B, G, t) -> logp (B, G, V). <eos> is never forbidden: a caption can always end."""
    if history.size(-1) == 0 or not (opts.prevent_repeats or opts.single_use):
        return logp
    forbidden = torch.zeros_like(logp, dtype=torch.bool)
    if opts.prevent_repeats:
        forbidden.scatter_(-1, history[..., -1:], True)
    if opts.single_use:
        used = torch.zeros_like(forbidden).scatter_(-1, history, True)
        used[..., list(opts.allowed_multiple)] = False
        forbidden |= used
    forbidden[..., EOS_ID] = False
    return logp.masked_fill(forbidden, NEG_INF)


def _block_trigrams(logp: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Forbid w where (w_{t-2}, w_{t-1}, w) already occurs in the hypothesis. history (B, G, t) -> logp (B, G, V)."""
    t = history.size(-1)
    if t < 3:
        return logp
    prev2, prev1 = history[..., -2:-1], history[..., -1:]
    seen = (history[..., : t - 2] == prev2) & (history[..., 1 : t - 1] == prev1)  # (B, G, t-2)
    blocked = torch.zeros_like(logp).scatter_add_(-1, history[..., 2:t], seen.to(logp.dtype))
    return logp.masked_fill(blocked > 0, NEG_INF)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of probs (..., V) -> (...), by inverting the cumulative distribution.

    One uniform number per row (torch.multinomial draws V exponential ones per row); tokens of probability 0 are never
    drawn. The cumulative sums are float64, so rounding cannot move probability between tokens.
    """
    cdf = probs.to(torch.float64).cumsum(-1)
    u = torch.rand_like(cdf[..., -1:]) * cdf[..., -1:]  # uniform in [0, total)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


class AllEnded:
    """Whether every hypothesis has emitted <eos>, asked once per decoding step without stalling a GPU.

    On the CPU this is `finished.all()`. On a GPU, reading a device value waits for all queued work, every step. Here
    each step queues an asynchronous copy of the flag into pinned host memory and reads the copy of an earlier step only
    once its event reports it landed: the loop stops a step or two after the last <eos> (the extra steps emit <pad> at
    no cost and change nothing), and never waits for the device.
    """

    def __init__(self, device: torch.device) -> None:
        self.asynchronous = device.type == "cuda"
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def __call__(self, finished: torch.Tensor) -> bool:
        if not self.asynchronous:
            return bool(finished.all())
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(finished.all(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((flag, event))
        while self.pending and self.pending[0][1].query():  # landed copies, oldest first
            landed, _ = self.pending.pop(0)
            if bool(landed):
                return True
        return False


def sample(
    model: Captioner,
    regions: torch.Tensor,
    mask: torch.Tensor,
    opts: DecodingOptions,
    num_samples: int = 1,
    greedy: bool = True,
) -> Decoded:
    """Greedy decoding (greedy=True) or sampling from softmax(logits / temperature), G = num_samples per image.

    Sampling draws from the allowed tokens only (the options' constraints), renormalised, and returns each token's
    log-probability under that distribution; greedy decoding returns the model's own log-probabilities (as beam
    search ranks them). Log-probabilities keep their graph when grad is enabled (self-critical training
    backpropagates through them).
    """
    return _sample(model, regions, mask, opts, 0 if greedy else num_samples, num_samples if greedy else 0)


def sample_with_greedy(
    model: Captioner, regions: torch.Tensor, mask: torch.Tensor, opts: DecodingOptions, num_samples: int
) -> tuple[Decoded, Decoded]:
    """`num_samples` samples per image and the greedy decoding (the self-critical baseline), in one pass.

    The greedy caption is one more hypothesis beside the samples, decoded as `sample(..., greedy=True)` in eval mode
    would: no dropout, no temperature. One pass of G = num_samples + 1 rows costs about what the samples alone cost,
    where a separate greedy pass of B rows cost 40% as much again (products of a few rows are as slow as of many).
    The samples are the ones `sample(..., greedy=False)` draws from the same random state. Returns (samples
    (B, num_samples, T), greedy (B, 1, T) with no graph).
    """
    both = _sample(model, regions, mask, opts, num_samples, 1)
    greedy = both.hypotheses(slice(num_samples, None))
    greedy = Decoded(
        greedy.tokens, greedy.attention.detach(), greedy.log_probs.detach(), greedy.scores.detach()
    )
    return both.hypotheses(slice(None, num_samples)), greedy


def _sample(
    model: Captioner,
    regions: torch.Tensor,
    mask: torch.Tensor,
    opts: DecodingOptions,
    drawn: int,
    greedy: int,
) -> Decoded:
    """G = drawn + greedy hypotheses per image: the first `drawn` sampled, the last `greedy` argmax without dropout."""
    b, g, device = regions.size(0), drawn + greedy, regions.device
    context, state = model.start(regions, mask)
    state = expand_state(state, g)
    token = torch.full((b, g), BOS_ID, dtype=torch.long, device=device)
    finished = torch.zeros(b, g, dtype=torch.bool, device=device)
    # Sampled rows divide their logits by the temperature, greedy rows by 1 (greedy decoding has no temperature).
    divisor = None  # (G, 1)
    if drawn and opts.temperature != 1.0:
        divisor = torch.tensor([[opts.temperature]] * drawn + [[1.0]] * greedy, device=device)
    tokens, attention, log_probs = [], [], []
    all_ended = AllEnded(device)
    for t in range(opts.max_length + 1):
        logits, alpha, state = model.step(
            context, state, token, eval_rows=greedy if drawn else 0
        )  # (B, G, V)
        if divisor is not None:
            logits = logits / divisor
        logp = torch.log_softmax(logits, dim=-1)
        allowed = _constrain(logp, t, opts)
        if tokens:
            history = torch.stack(tokens, -1)  # (B, G, t)
            allowed = _forbid_repeats(allowed, history, opts)
            if opts.block_trigrams:
                allowed = _block_trigrams(allowed, history)
        picked = []
        if drawn:
            picked.append(draw(torch.softmax(allowed[:, :drawn].detach(), -1)))
        if greedy:
            picked.append(allowed[:, drawn:].argmax(-1))
        token = (picked[0] if len(picked) == 1 else torch.cat(picked, 1)).masked_fill(finished, PAD_ID)
        token_logp = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)  # (B, G)
        if drawn:
            # A sampled token's log-probability is under the distribution it was drawn from: the allowed tokens,
            # renormalised (log_softmax of `allowed`, taken at the drawn token only). A forced token (<eos> at
            # max_length) has log-probability 0 there and no gradient.
            sampled = allowed[:, :drawn]
            drawn_logp = sampled.gather(-1, token[:, :drawn].unsqueeze(-1)).squeeze(-1)
            renormalised = drawn_logp - sampled.logsumexp(-1)
            token_logp = torch.cat([renormalised, token_logp[:, drawn:]], 1)
        token_logp = token_logp.masked_fill(finished, 0.0)
        tokens.append(token)
        attention.append(alpha)
        log_probs.append(token_logp)
        finished = finished | (token == EOS_ID)
        if all_ended(finished):
            break
    log_probs = torch.stack(log_probs, -1)
    return Decoded(torch.stack(tokens, -1), torch.stack(attention, 2), log_probs, log_probs.sum(-1))


def length_penalty(length: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """GNMT's length penalty ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, Eq. 14); |Y| counts the words and <eos>."""
    return ((5.0 + length) / 6.0) ** alpha


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, G, ...) -> (B, G', ...): the hypotheses `index` (B, G') of each image."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


@torch.no_grad()
def beam_search(
    model: Captioner, regions: torch.Tensor, mask: torch.Tensor, opts: DecodingOptions
) -> Decoded:
    """Beam search over B images x G = beam_size hypotheses at once. Returns the G best captions, best first.

    At each step the beam keeps the G best continuations (summed log-probabilities) of its live hypotheses. A
    continuation that is <eos> leaves the beam for a store of finished captions, ranked by its length-penalised score
    (`length_penalty`, applied when the caption finishes, as GNMT and fairseq do); its slot goes to the live
    hypotheses at the next step. The store keeps the G best finished captions, so a caption finished early is never
    pushed out by live hypotheses that later lose probability (ruotianluo/self-critical.pytorch's `done_beams`).
    The search stops at `max_length` or once no live hypothesis can still beat the G-th finished caption: extending
    a hypothesis only lowers its log-probability, and no length penalty is larger than the one at `max_length`.
    Scores are the ranked (length-penalised) scores; hypotheses that could not be completed (fewer than G captions
    exist under the options) have score -inf and only <pad> tokens.
    """
    b, g, device = regions.size(0), opts.beam_size, regions.device
    width = opts.max_length + 1  # words and <eos>
    context, state = model.start(regions, mask)
    state = expand_state(state, g)
    # All beams start identical: only the first may expand at step 0, or the beam would fill with copies.
    dtype = regions.dtype
    # (B, G) summed log-probabilities of the live hypotheses; -inf: an empty slot.
    live = torch.full((b, g), NEG_INF, device=device, dtype=dtype)
    live[:, 0] = 0.0
    token = torch.full((b, g), BOS_ID, dtype=torch.long, device=device)
    history = torch.full((b, g, width), PAD_ID, dtype=torch.long, device=device)  # (B, G, T) live tokens
    token_logps = torch.zeros(b, g, width, device=device, dtype=dtype)
    attention = torch.zeros(b, g, width, regions.size(1), device=device, dtype=dtype)  # (B, G, T, K)
    # The finished captions: ranked score, tokens, per-token log-probs, attention.
    done = torch.full((b, g), NEG_INF, device=device, dtype=dtype)
    done_tokens, done_logps, done_attention = history.clone(), token_logps.clone(), attention.clone()
    best_possible = length_penalty(float(width), opts.length_penalty) if opts.length_penalty >= 0 else None
    all_ended = AllEnded(device)
    steps = width
    for t in range(width):
        logits, alpha, state = model.step(context, state, token)
        logp = torch.log_softmax(logits, dim=-1)  # (B, G, V)
        allowed = _forbid_repeats(_constrain(logp, t, opts), history[..., :t], opts)
        if opts.block_trigrams:
            allowed = _block_trigrams(allowed, history[..., :t])
        vocab = allowed.size(-1)
        total = (live.unsqueeze(-1) + allowed).view(b, g * vocab)
        score, flat = total.topk(g, dim=-1)  # (B, G) best continuations over all live hypotheses
        source, token = flat // vocab, flat % vocab
        state = select_state(state, source)
        history = _gather(history, source)
        history[..., t] = token
        token_logps = _gather(token_logps, source)
        token_logps[..., t] = logp.view(b, g * vocab).gather(1, flat)
        attention = _gather(attention, source)
        attention[:, :, t] = _gather(alpha, source)
        # Continuations that end go to the store, ranked with the length penalty of their length t + 1.
        ended = token == EOS_ID
        ranked = torch.where(ended, score / length_penalty(t + 1.0, opts.length_penalty), NEG_INF)
        done, keep = torch.cat([done, ranked], 1).topk(g, dim=-1)
        done_tokens = _gather(torch.cat([done_tokens, history], 1), keep)
        done_logps = _gather(torch.cat([done_logps, token_logps], 1), keep)
        done_attention = _gather(torch.cat([done_attention, attention], 1), keep)
        live = score.masked_fill(ended, NEG_INF)
        # Stop once no live hypothesis can beat the worst stored caption (all live slots empty included).
        if best_possible is not None and all_ended(
            live.max(-1).values / best_possible <= done.min(-1).values
        ):
            steps = t + 1
            break
    missing = done == NEG_INF
    return Decoded(
        done_tokens[..., :steps].masked_fill(missing.unsqueeze(-1), PAD_ID),
        done_attention[:, :, :steps],
        done_logps[..., :steps].masked_fill(missing.unsqueeze(-1), 0.0),
        done,
    )


def decode(model: Captioner, regions: torch.Tensor, mask: torch.Tensor, opts: DecodingOptions) -> Decoded:
    """The evaluation decoder: beam search for beam_size > 1, greedy otherwise. Returns the best hypothesis (G = 1)."""
    if opts.beam_size > 1:
        return beam_search(model, regions, mask, opts).best()
    with torch.no_grad():
        return sample(model, regions, mask, opts, num_samples=1, greedy=True)
