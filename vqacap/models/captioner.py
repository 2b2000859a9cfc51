"""Top-down captioning model of Anderson et al., CVPR 2018, Sec. 3.2: an attention LSTM and a language LSTM.

Dims: B images, G hypotheses per image (1 in training and greedy decoding, the beam size in beam search), K regions,
D region feature dim, E word embedding dim, H hidden dim, A attention dim, T tokens, V vocabulary.

The LSTMs are written out as gate matmuls so that everything that does not depend on the recurrent state is computed
outside the time loop: the mean-region input of the attention LSTM once per image, its word input for all teacher-forced
steps in one matmul, the region side of the attention (W_va v_i) once per image, and the output projection for all steps
in one matmul. The language LSTM's input projection of the attended feature is moved inside the attention sum:
W v_hat + b = sum_i a_i (W v_i + b) because the weights sum to one, so W v_i + b is computed once per image (K rows)
instead of once per caption and step (G x T rows). Training batches hold G captions per image for the same reason.
Layers applied at every step get their weight gradients as one product over all steps (`StepWeights`), not one small
product per step. The equations are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqacap.models.attention import AdditiveAttention, attend
from vqacap.models.linear import Linear, linear


@dataclass
class ImageContext:
    """Per-image tensors computed once and shared by every step and every hypothesis of that image."""

    language_regions: torch.Tensor  # (B, K, 4H)  language LSTM input projection of each region, W v_i + b
    projected: torch.Tensor  # (B, K, A)  W_va v_i
    mask: torch.Tensor  # (B, K) bool
    mean_gates: torch.Tensor  # (B, 1, 4H) the mean region feature's input to the attention LSTM gates
    layers: StepWeights  # the layers applied at every step, for this pass


@dataclass
class State:
    h1: torch.Tensor  # (B, G, H) attention LSTM
    c1: torch.Tensor
    h2: torch.Tensor  # (B, G, H) language LSTM
    c2: torch.Tensor

    def select(self, index: torch.Tensor) -> State:
        """Reorder hypotheses: index (B, G') of hypotheses to keep, per image."""
        idx = index.unsqueeze(-1).expand(-1, -1, self.h1.size(-1))
        return State(*(t.gather(1, idx) for t in (self.h1, self.c1, self.h2, self.c2)))

    def expand(self, g: int) -> State:
        return State(*(t.expand(-1, g, -1).contiguous() for t in (self.h1, self.c1, self.h2, self.c2)))


def _lstm(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard LSTM update from pre-activation gates (..., 4H) ordered input, forget, cell, output."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class UpDownCaptioner(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 1000,
        hidden_dim: int = 1000,
        attention_dim: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        h4 = 4 * hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)  # W_e
        # Attention LSTM, Eq. (2): input x1_t = [h2_{t-1}; v_bar; W_e Pi_t], recurrent h1_{t-1}.
        self.attention_lstm_mean = Linear(feature_dim, h4)  # v_bar part (+ bias)
        self.attention_lstm_word = Linear(embed_dim, h4, bias=False)  # W_e Pi_t part
        self.attention_lstm_recurrent = Linear(2 * hidden_dim, h4, bias=False)  # [h2_{t-1}; h1_{t-1}] part
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attention_dim)  # Eq. (3)-(4)
        # Language LSTM, Eq. (6): input x2_t = [v_hat_t; h1_t], recurrent h2_{t-1}.
        self.language_lstm_attended = Linear(feature_dim, h4)  # v_hat_t part (+ bias)
        self.language_lstm_recurrent = Linear(2 * hidden_dim, h4, bias=False)  # [h1_t; h2_{t-1}] part
        self.dropout = nn.Dropout(dropout)
        self.output = Linear(hidden_dim, vocab_size)  # Eq. (7): p(y_t) = softmax(W_p h2_t + b_p)

    # -- pieces shared by training and decoding ----------------------------------------------------------------------
    def encode(self, regions: torch.Tensor, mask: torch.Tensor) -> ImageContext:
        """regions (B, K, D), mask (B, K) -> per-image context."""
        if regions.size(-1) != self.feature_dim:
            raise ValueError(
                f"region features have dimension {regions.size(-1)} but the model expects feature_dim={self.feature_dim}"
            )
        weights = mask.unsqueeze(-1).to(regions.dtype)
        mean = (regions * weights).sum(1) / weights.sum(1).clamp(
            min=1
        )  # (B, D) v_bar over valid regions only
        return ImageContext(
            language_regions=self.language_lstm_attended(regions),
            projected=self.attention.project_regions(regions),
            mask=mask,
            mean_gates=self.attention_lstm_mean(mean).unsqueeze(1),
            layers=StepWeights(
                self.attention_lstm_recurrent,
                self.language_lstm_recurrent,
                self.attention_lstm_word,
                self.embed,
                self.output,
            ),
        )

    def init_state(self, batch: int, device, dtype=torch.float32) -> State:
        zeros = torch.zeros(batch, 1, self.hidden_dim, device=device, dtype=dtype)
        return State(zeros, zeros, zeros, zeros)

    def step(
        self, ctx: ImageContext, state: State, word_gates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One time step for G hypotheses per image.

        word_gates (B, G, 4H) = attention_lstm_word(W_e Pi_t). Returns the language LSTM output h2_t (B, G, H) before
        dropout, the attention weights (B, G, K) and the new state.
        """
        # Eq. (2): h1_t = LSTM(x1_t, h1_{t-1})
        recurrent1 = ctx.layers(self.attention_lstm_recurrent, torch.cat([state.h2, state.h1], -1))
        gates1 = ctx.mean_gates + word_gates + recurrent1
        h1, c1 = _lstm(gates1, state.c1)
        # Eq. (3)-(5): a_t = softmax(w_a^T tanh(W_va v_i + W_ha h1_t)), v_hat_t = sum_i a_{i,t} v_i
        alpha = self.attention(ctx.projected, h1, ctx.mask)  # (B, G, K)
        # Eq. (6): h2_t = LSTM([v_hat_t; h1_t], h2_{t-1}); W v_hat_t + b = sum_i a_i (W v_i + b)
        attended_gates = attend(alpha, ctx.language_regions)  # (B, G, 4H)
        gates2 = attended_gates + ctx.layers(self.language_lstm_recurrent, torch.cat([h1, state.h2], -1))
        h2, c2 = _lstm(gates2, state.c2)
        return h2, alpha, State(h1, c1, h2, c2)

    def word_gates(self, tokens: torch.Tensor, ctx: ImageContext | None = None) -> torch.Tensor:
        """tokens (B, G) or (B, T) -> their word input to the attention LSTM gates (..., 4H).

        With the pass's context (`encode`) the layers run as its `StepWeights` prepared them.
        """
        layers = ctx.layers if ctx is not None else StepWeights()
        return layers(self.attention_lstm_word, layers(self.embed, tokens))

    def logits(self, h2: torch.Tensor, ctx: ImageContext | None = None, exact: int = 0) -> torch.Tensor:
        """h2 (..., H) -> (..., V); the context as in `word_gates`.

        exact: the last `exact` hypotheses of h2 (B, G, H) skip dropout, as in eval mode (the greedy baseline decoded in
        the same pass as the self-critical samples).
        """
        layers = ctx.layers if ctx is not None else StepWeights()
        if exact and self.training:
            cut = h2.size(1) - exact
            return layers(self.output, torch.cat([self.dropout(h2[:, :cut]), h2[:, cut:]], 1))
        return layers(self.output, self.dropout(h2))

    # -- teacher forcing ----------------------------------------------------------------------------------------------
    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over G captions per image. tokens (B, G, T) = <bos> w_1 .. w_n <eos> <pad>...

        Returns logits (B, G, T-1, V) predicting tokens[..., 1:] and attention weights (B, G, T-1, K).
        (B, T) tokens (one caption per image) give (B, T-1, V) and (B, T-1, K).
        """
        single = tokens.dim() == 2
        if single:
            tokens = tokens.unsqueeze(1)
        ctx = self.encode(regions, mask)
        b, g, steps = tokens.size(0), tokens.size(1), tokens.size(2) - 1
        # (B, G, T-1, 4H): all steps in one matmul. Unbound, not indexed per step: the backward of T-1 indexings
        # would add up T-1 zero-filled tensors of the full size.
        word_gates = self.word_gates(tokens[..., :-1]).unbind(2)
        state = self.init_state(b, regions.device, regions.dtype).expand(g)
        outputs, attention = [], []
        for t in range(steps):
            h2, alpha, state = self.step(ctx, state, word_gates[t])
            outputs.append(h2)
            attention.append(alpha)
        logits = self.logits(torch.stack(outputs, 2), ctx)  # (B, G, T-1, V) in one matmul
        attention = torch.stack(attention, 2)  # (B, G, T-1, K)
        return (logits.squeeze(1), attention.squeeze(1)) if single else (logits, attention)


# -- gradients of the weights applied at every step ----------------------------------------------------------------
class StepWeights:
    """Layers applied at every time step of a pass, with their weight gradients computed once for all steps.

    Autograd computes the gradient of a weight used at T steps as T products g_t^T x_t of only the step's rows each, and
    adds them up one by one (for an embedding, T dense (V, E) gradients). Here each step's backward keeps (x_t, g_t),
    and when the backward pass reaches the weight its gradient is one product over the rows of all steps. The values
    are those of the layers; only the order of the additions in the gradient changes. One backward pass per forward.

    A linear layer whose output count is not a multiple of 16 (a 9,487-word vocabulary) gets zero rows appended to its
    weight for the pass, and the extra outputs are cut off: matrix products with such row counts run up to twice as
    slowly. Without grad mode (decoding) only that is done.
    """

    def __init__(self, *layers: nn.Linear | nn.Embedding) -> None:
        self._steps: dict[nn.Module, tuple[list | None, tuple[torch.Tensor, ...]]] = {}
        for layer in layers:
            embedding = isinstance(layer, nn.Embedding)
            if embedding and (layer.max_norm or layer.scale_grad_by_freq or layer.sparse):
                continue  # not the plain lookup the gathered gradient assumes
            params = tuple(p for p in (layer.weight, getattr(layer, "bias", None)) if p is not None)
            pad = 0 if embedding else -layer.out_features % ALIGN_ROWS
            if torch.is_grad_enabled() and any(p.requires_grad for p in params):
                steps: list = []
                self._steps[layer] = (steps, _GatherGradients.apply(steps, layer, pad, *params))
            elif pad:
                self._steps[layer] = (None, tuple(_pad_rows(p, pad) for p in params))

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if layer not in self._steps:
            return layer(x)
        steps, params = self._steps[layer]
        if isinstance(layer, nn.Embedding):
            return _EmbeddingStep.apply(x, steps, layer.padding_idx, *params)
        if steps is None or not torch.is_grad_enabled():
            y = linear(x, *params)
        else:
            y = _LinearStep.apply(x, steps, *params)
        return y[..., : layer.out_features] if y.size(-1) > layer.out_features else y


ALIGN_ROWS = 16


def _pad_rows(p: torch.Tensor, pad: int) -> torch.Tensor:
    """A weight (out, in) or bias (out,) with `pad` zero rows appended."""
    return F.pad(p, (0, 0, 0, pad) if p.dim() == 2 else (0, pad)) if pad else p.view_as(p)


class _LinearStep(torch.autograd.Function):
    """y = x W^T + b at one step; the backward returns the input gradient and leaves (x, g) for `_GatherGradients`."""

    @staticmethod
    def forward(ctx, x, steps, weight, bias=None):
        ctx.save_for_backward(x, weight)
        ctx.steps = steps
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.steps.append((x.reshape(-1, x.size(-1)), grad.reshape(-1, grad.size(-1))))
        grad_x = (
            linear(grad, weight.to(grad.dtype).t()).to(x.dtype) if ctx.needs_input_grad[0] else None
        )  # g W
        return grad_x, None, None, None


class _EmbeddingStep(torch.autograd.Function):
    """Embedding lookup at one step; the backward leaves (ids, g) for `_GatherGradients`."""

    @staticmethod
    def forward(ctx, ids, steps, padding_idx, weight):
        ctx.save_for_backward(ids)
        ctx.steps = steps
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ctx.steps.append((ids.reshape(-1), grad.reshape(-1, grad.size(-1))))
        return None, None, None, None


class _GatherGradients(torch.autograd.Function):
    """Identity on a layer's parameters; its backward runs after every step's and returns the gradients of all steps."""

    @staticmethod
    def forward(ctx, steps, layer, pad, *params):
        ctx.set_materialize_grads(False)
        ctx.steps, ctx.padding_idx = steps, getattr(layer, "padding_idx", None)
        ctx.embedding = isinstance(layer, nn.Embedding)
        ctx.shapes = [(p.shape, p.dtype) for p in params]
        return tuple(_pad_rows(p, pad) for p in params)

    @staticmethod
    def backward(ctx, *grads):
        if not ctx.steps:
            return None, None, None, *grads
        # All steps' rows: inputs (N, in), or (N,) ids for an embedding; output gradients (N, out).
        inputs, outputs = (torch.cat(t) for t in zip(*ctx.steps))
        ctx.steps.clear()
        (shape, dtype), *bias = ctx.shapes
        if ctx.embedding:
            weight = torch.zeros(shape, dtype=dtype, device=outputs.device)
            weight.index_add_(0, inputs, outputs.to(dtype))
            if ctx.padding_idx is not None:
                weight[ctx.padding_idx] = 0  # as the lookup's own backward: <pad> rows get no gradient
            found = [weight]
        else:
            rows = shape[0]  # without the appended rows
            found = [(outputs.t() @ inputs.to(outputs.dtype))[:rows].to(dtype)]  # sum_t g_t^T x_t
            if bias:
                found.append(outputs.sum(0)[:rows].to(bias[0][1]))
        return None, None, None, *(f if g is None else f + g[: f.size(0)] for f, g in zip(found, grads))
