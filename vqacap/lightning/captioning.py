"""LightningModule for the top-down captioner: cross-entropy training, decoding, caption metrics, results files.

The pure model lives in `vqacap.models.captioner`; this module owns the loss, optimisation, metrics and logging.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from vqacap.data.captions import CaptionBatch
from vqacap.data.vocab import PAD_ID, Vocabulary, tokenize
from vqacap.lightning.common import (
    TaskModule,
    log_grounding,
    region_dim,
    region_inputs,
    write_results,
)
from vqacap.lightning.self_critical import (
    SelfCriticalOptions,
    baseline,
    self_critical_loss,
    teacher_forced_log_probs,
)
from vqacap.metrics.captions import CaptionMetrics, CiderDReward
from vqacap.metrics.grounding import GroundingAccuracy, caption_targets
from vqacap.models.decoding import (
    Decoded,
    DecodingOptions,
    allowed_multiple_ids,
    beam_search,
    decode,
    sample,
    sample_with_greedy,
)


def doubly_stochastic_penalty(
    attention: torch.Tensor, emitted: torch.Tensor, region_mask: torch.Tensor
) -> torch.Tensor:
    """Xu et al. 2015 Sec. 4.2.1: sum_i (1 - sum_t alpha_ti)^2 per caption, summed over the captions.

    attention (B, G, T, K) or (B, T, K); emitted (B, G, T) or (B, T), True at the caption's steps (words and <eos>);
    region_mask (B, K), True for real regions (padded slots are no locations).
    """
    if attention.dim() == 3:
        attention, emitted = attention.unsqueeze(1), emitted.unsqueeze(1)
    coverage = (attention * emitted.unsqueeze(-1)).sum(2)  # (B, G, K): sum_t alpha_ti
    return ((1.0 - coverage) ** 2 * region_mask.unsqueeze(1)).sum()


class CaptioningModule(TaskModule):
    """`references`: {split: {image_id: [captions]}} from the data (`model_kwargs`): the caption metrics score the val
    and test splits against them, self-critical training rewards against the train split's."""

    task = "captioning"

    def __init__(
        self,
        net: Callable,
        words: list[str],
        feature_dim: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        use_spatial: bool = False,
        decoding: dict | None = None,
        val_beam_size: int = 1,
        metrics: tuple[str, ...] = ("Bleu_4", "CIDEr"),
        monitor: str = "val/CIDEr",
        results_dir: str | None = None,
        scst: dict | None = None,
        references: dict[str, dict[int, list[str]]] | None = None,
        attention_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        # The references come from the data files again each run; a checkpoint need not carry them.
        self.save_hyperparameters(logger=False, ignore=["references"])
        self.vocab = Vocabulary.from_words(words)  # words = the full id -> word list, specials first
        self.net = net(vocab_size=len(words), feature_dim=region_dim(feature_dim, use_spatial))
        self.use_spatial = use_spatial
        self.attention_penalty = float(attention_penalty)  # lambda of `doubly_stochastic_penalty`; 0: none
        decoding = {**(decoding or {}), "allowed_multiple": allowed_multiple_ids(words)}
        self.decoding = DecodingOptions(**decoding)
        self.val_decoding = DecodingOptions(**{**decoding, "beam_size": val_beam_size})
        self.metric_names = tuple(metrics)
        self.results_dir = results_dir
        self.scst = (
            SelfCriticalOptions(**{k: v for k, v in scst.items() if k != "enabled"})
            if scst and scst.get("enabled", True)
            else None
        )
        references = references or {}
        self._metrics = {
            split: CaptionMetrics(references[split], self.vocab.words, self.metric_names)
            for split in ("val", "test")
            if split in references
        }
        self.reward: CiderDReward | None = None
        if self.scst and "train" in references:
            # Document frequencies precomputed once, over the training images or every split's (SCSTLayer's).
            scored = references["train"]
            if self.scst.document_frequencies == "all":
                scored = {i: refs for split in references.values() for i, refs in split.items()}
            self.reward = self._cider_d_reward(scored)
        self.grounding = torch.nn.ModuleDict({split: GroundingAccuracy() for split in ("val", "test")})
        self._results: list[dict] = []

    def forward(self, batch: CaptionBatch, opts: DecodingOptions | None = None) -> Decoded:
        regions = batch.regions
        return decode(self.net, region_inputs(regions, self.use_spatial), regions.mask, opts or self.decoding)

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: CaptionBatch, batch_idx: int) -> torch.Tensor:
        if self.scst:
            return self._self_critical_step(batch)
        regions = batch.regions
        logits, attention = self.net(
            region_inputs(regions, self.use_spatial), regions.mask, batch.tokens
        )  # (B, G, T-1, V), (B, G, T-1, K)
        target = batch.tokens[..., 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=PAD_ID)
        if self.attention_penalty:
            emitted = target != PAD_ID
            penalty = doubly_stochastic_penalty(attention, emitted, regions.mask)
            # Xu et al. add the penalty to each caption's summed log-likelihood; the loss here is per token.
            loss = loss + self.attention_penalty * penalty / emitted.sum().clamp(min=1)
            self.log(
                "train/attention_penalty", penalty / emitted.shape[:-1].numel(), batch_size=target.size(0)
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=target.size(0))
        return loss

    def _cider_d_reward(self, references: dict[int, list[str]]) -> CiderDReward:
        """The reward over `references`: cut to the trained captions' length as the data cuts them, or full
        (`full_references`), where a word outside the vocabulary is a word of its own, as in SCSTLayer's string
        matching (an id past the vocabulary that no caption emits), not <unk>."""
        if not self.scst.full_references:
            vocab = Vocabulary.from_words(self.vocab.words, max_length=self.scst_decoding.max_length)
            encoded = {i: [vocab.encode(c) for c in captions] for i, captions in references.items()}
            return CiderDReward(encoded, count_eos=self.scst.count_eos)
        index = dict(self.vocab.index)
        encoded = {
            i: [[index.setdefault(w, len(index)) for w in tokenize(c)] for c in captions]
            for i, captions in references.items()
        }
        return CiderDReward(encoded, count_eos=self.scst.count_eos)

    @property
    def scst_decoding(self) -> DecodingOptions:
        return self.scst.decoding(self.decoding.max_length, self.decoding.allowed_multiple)

    def _self_critical_step(self, batch: CaptionBatch) -> torch.Tensor:
        """Self-critical training; `model.scst.mode` picks Rennie et al.'s (sample) or Anderson et al.'s (beam)."""
        regions, opts = batch.regions, self.scst_decoding
        x, g = region_inputs(regions, self.use_spatial), self.scst.num_samples
        greedy_rewards = None
        if self.scst.mode == "beam":  # top-g beam captions, decoded without dropout (Up-Down-Captioner)
            training = self.net.training
            self.net.eval()
            tokens = beam_search(self.net, x, regions.mask, opts).tokens  # (B, g, T)
            # SCSTLayer's gradient pass has no dropout either (Up-Down's nets have none), unless beam_dropout.
            self.net.train(training and self.scst.beam_dropout)
            log_probs = teacher_forced_log_probs(self.net, x, regions.mask, tokens)  # (B, g, T)
            self.net.train(training)
        elif self.scst.baseline == "greedy":  # the greedy caption is one more hypothesis of the sampling pass
            samples, greedy = sample_with_greedy(self.net, x, regions.mask, opts, g)  # (B, g, T), (B, 1, T)
            tokens, log_probs = samples.tokens, samples.log_probs
            greedy_rewards = self.reward(batch.image_ids, greedy.tokens[:, 0]).to(x.device)  # (B,)
        else:
            samples = sample(self.net, x, regions.mask, opts, num_samples=g, greedy=False)
            tokens, log_probs = samples.tokens, samples.log_probs
        b = x.size(0)
        rewards = (
            self.reward(batch.image_ids.repeat_interleave(g), tokens.flatten(0, 1)).view(b, g).to(x.device)
        )
        baselines = baseline(rewards, self.scst.baseline, greedy_rewards)  # (B, g)
        loss = self_critical_loss(log_probs, tokens, rewards, baselines)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/reward", rewards.mean(), prog_bar=True, batch_size=b)
        self.log("train/baseline", baselines.mean(), batch_size=b)
        return loss

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _eval_step(self, batch: CaptionBatch, split: str, opts: DecodingOptions) -> Decoded:
        decoded = self(batch, opts)
        tokens = decoded.tokens[:, 0]  # (B, T)
        metric = self._metrics[split].to(self.device)
        metric.update(batch.image_ids, tokens)
        self._update_grounding(batch, split, decoded)
        if split == "test":
            for image_id, text in zip(batch.image_ids.tolist(), self.vocab.decode_batch(tokens)):
                self._results.append({"image_id": image_id, "caption": text})
        return decoded

    def validation_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_decoding)

    def test_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.decoding)

    def _log_metrics(self, split: str) -> dict[str, float]:
        metric = self._metrics[split]
        scores = metric.compute()
        metric.reset()
        for name, value in scores.items():
            self.log(
                f"{split}/{name}",
                float(value),
                prog_bar=name == "CIDEr",
                sync_dist=False,
                rank_zero_only=True,
            )
        return scores

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        log_grounding(self, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        log_grounding(self, "test")
        results, self._results = self._results, []
        if self.results_dir:
            write_results(self, results, "image_id", Path(self.results_dir) / "test_captions.json")

    # -- attention: grounding accuracy, attention maps -------------------------------------------------------------
    def _update_grounding(self, batch: CaptionBatch, split: str, decoded: Decoded) -> None:
        """Grounding of the generated words that name one object of the scene; a no-op for data without scenes."""
        if batch.objects is None:
            return
        tokens = decoded.tokens[:, 0]  # (B, T)
        words = [caption.split() for caption in self.vocab.decode_batch(tokens)]
        targets, grounded = caption_targets(words, batch.objects, tokens.size(1))  # (B, T, 4), (B, T)
        self.grounding[split].update(
            decoded.attention[:, 0], batch.regions.boxes, targets.to(self.device), grounded, batch.image_ids
        )

    def predict_step(self, batch: CaptionBatch, batch_idx: int) -> list[dict]:
        """Per image, `explain`'s record decoded with the test decoding (`decoding`, e.g. a beam), plus "caption" and,
        when the batch names its regions (vqacap.data.pixels), "labels" (k names)."""
        items = self.explain(batch, self.decoding)
        for n, item in enumerate(items):
            item["caption"] = " ".join(item["words"])
            if getattr(batch, "region_labels", None):
                item["labels"] = batch.region_labels[n]
        return items

    @torch.no_grad()
    def explain(self, batch: CaptionBatch, opts: DecodingOptions | None = None) -> list[dict]:
        """What an attention map of each image shows: the caption of the validation decoding (or `opts`), and each
        word's attention.

        Returns, per image, {"id", "image_id", "image_size" (w, h), "boxes" (k, 4), "words" (T words), "attention"
        (T, k)} on the CPU, k the image's real regions; attention[t] is the attention of the step that emits words[t].
        """
        batch = batch.to(self.device)
        training = self.training
        self.eval()
        decoded = self(batch, opts or self.val_decoding)
        self.train(training)
        regions, items = batch.regions, []
        for b, image_id in enumerate(batch.image_ids.tolist()):
            words = self.vocab.decode(decoded.tokens[b, 0].tolist()).split()
            real = regions.mask[b]
            items.append({
                "id": image_id,
                "image_id": image_id,
                "image_size": tuple(int(x) for x in regions.image_size[b].tolist()),
                "boxes": regions.boxes[b, real].cpu(),
                "words": words,
                "attention": decoded.attention[b, 0, : len(words)][:, real].cpu(),
            })  # fmt: skip
        return items
