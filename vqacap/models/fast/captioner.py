"""The top-down captioner computed faster on the CPU: same parameters, state dict and equations as `UpDownCaptioner`.

Dims as in `vqacap.models.captioner` (B images, G hypotheses per image, K regions, D feature dim, E embedding dim,
H hidden dim, A attention dim, T tokens, V vocabulary).

What changes, each only how the products are grouped:

- Everything that does not depend on the recurrent state is computed outside the time loop. The attention LSTM's
  v_bar input and both LSTMs' biases once per image; its word input for all teacher-forced steps in one product; the
  output projection of all teacher-forced steps in one product.
- Eq. (6)'s input projection of the attended feature moves inside the attention sum: W v_hat + b = sum_i a_i (W v_i +
  b), because the weights sum to one; W v_i + b is computed once per image (K rows) instead of once per caption and
  step (G x T rows).
- Each LSTM's recurrent inputs are one product with the stacked weight: `[W_ih's h2 columns | W_hh] [h2; h1]` for
  the attention LSTM, `[W_ih's h1 columns | W_hh] [h1; h2]` for the language LSTM.
- Layers applied at every step get their weight gradients as one product over all steps (`StepWeights`).
- The output layer gets zero rows up to a multiple of 16 for the pass (products with 9,487 rows ran slowly) and
  linear layers multiply through oneDNN (`vqacap.models.fast.linear`).

tests/models/test_fast_equivalence.py proves outputs and gradients equal to the paper form's in every decoding mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqacap.models.attention import attend
from vqacap.models.captioner import UpDownCaptioner, UpDownState
from vqacap.models.decoding import dropout_rows, expand_state
from vqacap.models.fast.linear import OneDNNProducts, linear

ALIGN_ROWS = 16


@dataclass
class FastContext:
    """Per-image tensors computed once and shared by every step and every hypothesis of the image."""

    language_regions: (
        torch.Tensor
    )  # (B, K, 4H) the language LSTM's input projection of each region, W v_i + b
    projected: torch.Tensor  # (B, K, A) W_va v_i
    mask: torch.Tensor  # (B, K) bool
    mean_gates: torch.Tensor  # (B, 1, 4H) the attention LSTM's v_bar input and bias
    layers: StepWeights  # the layers applied at every step, for this pass


def _lstm(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTMCell's update from pre-activation gates (..., 4H) ordered input, forget, cell, output."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class FastUpDownCaptioner(UpDownCaptioner):
    def start(self, regions: torch.Tensor, mask: torch.Tensor) -> tuple[FastContext, UpDownState]:
        with OneDNNProducts():
            paper, state = super().start(regions, mask)
        h, d = self.hidden_dim, self.feature_dim
        lstm1, lstm2 = self.attention_lstm, self.language_lstm
        # Column blocks of W_ih: attention LSTM [h2 | v_bar | word], language LSTM [v_hat | h1]. The blocks used at
        # every step are copied once per pass, so that oneDNN multiplies dense weights; the once-per-image products
        # read theirs in place (no copy for one product).
        w1_h2, w1_mean, w1_word = lstm1.weight_ih.split([h, d, lstm1.input_size - h - d], dim=1)
        w2_v, w2_h1 = lstm2.weight_ih.split([d, h], dim=1)
        layers = StepWeights()
        layers.add_embedding("embed", self.embed)
        layers.add_linear("word", w1_word.contiguous())
        layers.add_linear("recurrent1", torch.cat([w1_h2, lstm1.weight_hh], 1))  # on [h2_{t-1}; h1_{t-1}]
        layers.add_linear("recurrent2", torch.cat([w2_h1, lstm2.weight_hh], 1))  # on [h1_t; h2_{t-1}]
        layers.add_linear("output", self.output.weight, self.output.bias, align=ALIGN_ROWS)
        context = FastContext(
            language_regions=linear(regions, w2_v, lstm2.bias_ih + lstm2.bias_hh),
            projected=paper.projected,
            mask=mask,
            mean_gates=linear(paper.mean, w1_mean, lstm1.bias_ih + lstm1.bias_hh),
            layers=layers,
        )
        return context, state

    def _recur(
        self, ctx: FastContext, state: UpDownState, word_gates: torch.Tensor
    ) -> tuple[torch.Tensor, UpDownState]:
        """Eq. (2)-(6) for one step, from the word's input to the attention LSTM gates (B, G, 4H)."""
        recurrent1 = ctx.layers.linear("recurrent1", torch.cat([state.h2, state.h1], -1))
        h1, c1 = _lstm(ctx.mean_gates + word_gates + recurrent1, state.c1)
        with OneDNNProducts():
            alpha = self.attention(ctx.projected, h1, ctx.mask)  # (B, G, K)
        attended = attend(alpha, ctx.language_regions)  # (B, G, 4H) = W v_hat_t + b
        h2, c2 = _lstm(attended + ctx.layers.linear("recurrent2", torch.cat([h1, state.h2], -1)), state.c2)
        return alpha, UpDownState(h1, c1, h2, c2)

    def step(
        self, context: FastContext, state: UpDownState, tokens: torch.Tensor, eval_rows: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, UpDownState]:
        layers = context.layers
        alpha, state = self._recur(context, state, layers.linear("word", layers.embedding("embed", tokens)))
        logits = layers.linear("output", dropout_rows(self.dropout, state.h2, eval_rows))
        return logits, alpha, state

    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        single = tokens.dim() == 2
        if single:
            tokens = tokens.unsqueeze(1)
        ctx, state = self.start(regions, mask)
        state = expand_state(state, tokens.size(1))
        # (B, G, T-1, 4H): all steps in one product. Unbound, not indexed per step: the backward of T-1 indexings
        # would add up T-1 zero-filled tensors of the full size.
        word_gates = ctx.layers.linear("word", ctx.layers.embedding("embed", tokens[..., :-1])).unbind(2)
        outputs, attention = [], []
        for gates in word_gates:
            alpha, state = self._recur(ctx, state, gates)
            outputs.append(state.h2)
            attention.append(alpha)
        logits = ctx.layers.linear("output", self.dropout(torch.stack(outputs, 2)))  # (B, G, T-1, V)
        attention = torch.stack(attention, 2)  # (B, G, T-1, K)
        return (logits.squeeze(1), attention.squeeze(1)) if single else (logits, attention)


# -- gradients of the weights applied at every step ----------------------------------------------------------------
class StepWeights:
    """Weights applied at every time step of a pass, with their gradients computed once for all steps.

    Autograd computes the gradient of a weight used at T steps as T products g_t^T x_t of only the step's rows each, and
    adds them up one by one (for an embedding, T dense (V, E) gradients). Here each step's backward keeps (x_t, g_t),
    and when the backward pass reaches the weight its gradient is one product over the rows of all steps. The values
    are those of the layers; only the order of the additions in the gradient changes. One backward pass per forward.
    Without grad mode (decoding) the products run as they are (with the row padding).

    torch.compile runs these methods as they are: TorchDynamo would trace the gathering backward once, with no steps
    recorded yet, and keep that branch.
    """

    def __init__(self) -> None:
        self._linear: dict[str, tuple[list | None, int, tuple[torch.Tensor, ...]]] = {}
        self._embedding: dict[str, tuple[list | None, int | None, torch.Tensor]] = {}

    @staticmethod
    def _gathering(params: tuple[torch.Tensor, ...]) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in params)

    @torch.compiler.disable
    def add_linear(
        self, name: str, weight: torch.Tensor, bias: torch.Tensor | None = None, align: int = 1
    ) -> None:
        """weight (out, in), bias (out,); with `align`, zero rows up to a multiple of it for the pass."""
        params = (weight,) if bias is None else (weight, bias)
        pad = -weight.size(0) % align
        if self._gathering(params):
            steps: list = []
            self._linear[name] = (
                steps,
                weight.size(0),
                _GatherGradients.apply(steps, False, None, pad, *params),
            )
        else:
            self._linear[name] = (None, weight.size(0), tuple(_pad_rows(p, pad) for p in params))

    @torch.compiler.disable
    def add_embedding(self, name: str, embedding: nn.Embedding) -> None:
        if embedding.max_norm or embedding.scale_grad_by_freq or embedding.sparse:
            raise ValueError("StepWeights gathers the gradients of plain embedding lookups only")
        weight, padding_idx = embedding.weight, embedding.padding_idx
        if self._gathering((weight,)):
            steps: list = []
            (gathered,) = _GatherGradients.apply(steps, True, padding_idx, 0, weight)
            self._embedding[name] = (steps, padding_idx, gathered)
        else:
            self._embedding[name] = (None, padding_idx, weight)

    @torch.compiler.disable
    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        steps, rows, params = self._linear[name]
        if steps is None or not torch.is_grad_enabled():
            y = linear(x, *params)
        else:
            y = _LinearStep.apply(x, steps, *params)
        return y[..., :rows] if y.size(-1) > rows else y

    @torch.compiler.disable
    def embedding(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., E)."""
        steps, padding_idx, weight = self._embedding[name]
        if steps is None:
            return F.embedding(ids, weight, padding_idx)
        return _EmbeddingStep.apply(ids, steps, padding_idx, weight)


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
    """Identity on a layer's parameters (rows padded); its backward runs after every step's and returns the gradients
    of all steps."""

    @staticmethod
    def forward(ctx, steps, embedding, padding_idx, pad, *params):
        ctx.set_materialize_grads(False)
        ctx.steps, ctx.embedding, ctx.padding_idx = steps, embedding, padding_idx
        ctx.shapes = [(p.shape, p.dtype) for p in params]
        return tuple(_pad_rows(p, pad) for p in params)

    @staticmethod
    def backward(ctx, *grads):
        if not ctx.steps:
            return None, None, None, None, *grads
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
        grads = (f if g is None else f + g[: f.size(0)] for f, g in zip(found, grads))
        return None, None, None, None, *grads
