"""VQA data: official VQA question/annotation files + a region-feature store -> padded batches with soft targets.

One DataModule serves Shapes and VQA v2; a data folder holds

    <data_dir>/regions.h5                        region-feature store (vqacap.data.store)
    <data_dir>/vqa_<split>_questions.json        VQA questions {"questions": [{"image_id", "question", "question_id"}]}
    <data_dir>/vqa_<split>_annotations.json      VQA annotations (absent for test-dev / test-std: then no targets)
    <data_dir>/question_vocab.json               words of the training questions (written on first use if absent)
    <data_dir>/answer_vocab.json                 candidate answers and type names (written on first use if absent)

Questions are tokenized with the shared tokenizer and truncated to `max_length` (14) words. The candidate answers are the
official normalisation (`process_answer`, vqacap.data.answers) of the training `multiple_choice_answer`s seen in at
least `min_answer_count` (9) questions, most frequent first. Every annotated question gets its soft target, the official
accuracy of every candidate (`soft_scores`), and the candidate indices of its human answers, so the validation metric is
the official accuracy; a question whose answers are all outside the candidates has an all-zero target. Questions about
one object (Shapes `target_box`) carry that box, for grounding accuracy. Region reads happen in `collate`, one batched
store read per batch, in the DataLoader workers; loaders, store and training order are `RegionDataModule`'s. The files
and fields, and how a dataset of another format becomes them (`vqacap prepare questions`): docs/new-dataset.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vqacap.data.answers import (
    blank,
    blank_answer,
    gt_answer_indices,
    process_answer,
    soft_scores_of_indices,
)
from vqacap.data.base import SPLITS, Batch, RegionBatcher, RegionDataModule, spread
from vqacap.data.captions import load_caption_annotations
from vqacap.data.formats import FormatError, load_vqa_annotations, load_vqa_questions
from vqacap.data.store import Regions, RegionStoreError
from vqacap.data.vocab import Vocabulary

log = logging.getLogger(__name__)

GLOVE_DIM = 300


@dataclass
class VQABatch(Batch):
    question_ids: torch.Tensor  # (B,) long
    image_ids: torch.Tensor  # (B,) long
    regions: Regions  # features (B, K, D), boxes, mask (B, K)
    questions: torch.Tensor  # (B, T) long token ids, 0 = <pad>
    # Only for annotated splits, else None:
    targets: torch.Tensor | None = None  # (B, A) float soft scores
    gt_answers: torch.Tensor | None = None  # (B, N) long candidate index of each human answer, -1 for none
    answer_types: torch.Tensor | None = None  # (B,) long index into answer_vocab.json "answer_types"
    question_types: torch.Tensor | None = None  # (B,) long index into "question_types"
    # The N raw human answers of each question, to score any answer string:
    human_answers: list[list[str]] | None = None
    # Only for annotations with `target_box` (Shapes), for grounding accuracy:
    target_boxes: torch.Tensor | None = None  # (B, 4) the box of the one object a question is about
    has_target: torch.Tensor | None = None  # (B,) bool, whether the question is about one object
    # Only for annotations with `answer_seen` (Shapes): whether the answer occurs among the training answers.
    answer_seen: torch.Tensor | None = None  # (B,) bool


@dataclass
class AnswerVocabulary:
    """Candidate answers (index = output unit of the model) and the answer / question type names of the metric."""

    answers: list[str]
    answer_types: list[str]
    question_types: list[str]
    min_count: int = 9

    def __post_init__(self) -> None:
        self.index = {a: i for i, a in enumerate(self.answers)}

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def build(
        cls, train: list[dict], annotated_splits: list[list[dict]], min_count: int = 9
    ) -> AnswerVocabulary:
        """Answers from the training annotations; type names from every annotated split."""
        counts = Counter(process_answer(ann["multiple_choice_answer"]) for ann in train)
        answers = sorted(
            (a for a, c in counts.items() if c >= min_count and not blank(a)), key=lambda a: (-counts[a], a)
        )
        every = [ann for split in annotated_splits for ann in split]
        return cls(
            answers,
            sorted({ann["answer_type"] for ann in every}),
            sorted({ann["question_type"] for ann in every}),
            min_count,
        )

    def save(self, path: str | os.PathLike) -> None:
        data = {k: getattr(self, k) for k in ("answers", "answer_types", "question_types", "min_count")}
        Path(path).write_text(json.dumps(data, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerVocabulary:
        try:
            data = json.loads(Path(path).read_text())
            return cls(
                data["answers"], data["answer_types"], data["question_types"], data.get("min_count", 9)
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: answer vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an answer vocabulary file ({err})") from None


def load_glove(path: str | os.PathLike, words: list[str], dim: int = GLOVE_DIM) -> torch.Tensor:
    """(len(words), dim) GloVe vectors of `words` from a glove.6B.<dim>d.txt file; words without one get zeros."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: GloVe file not found. Download glove.6B.zip from https://nlp.stanford.edu/projects/glove/ and "
            f"unzip glove.6B.{dim}d.txt there, or set data.glove=null to learn the word embeddings from scratch"
        )
    index = {w: i for i, w in enumerate(words)}
    weights = np.zeros((len(words), dim), dtype=np.float32)
    with path.open(encoding="utf8") as f:
        for line_no, line in enumerate(f, 1):
            word, _, vector = line.rstrip().partition(" ")
            i = index.get(word)
            if i is not None:
                values = vector.split(" ")
                if len(values) != dim:
                    raise ValueError(f"{path}:{line_no}: {len(values)} values for '{word}', expected {dim}")
                weights[i] = np.asarray(values, dtype=np.float32)
    return torch.from_numpy(weights)


@dataclass
class VQASplit:
    """All questions of one split as tensors; the annotation fields are None when the split has no annotations."""

    question_ids: torch.Tensor  # (N,)
    image_ids: torch.Tensor  # (N,)
    questions: torch.Tensor  # (N, T)
    gt_answers: torch.Tensor | None = None  # (N, n)
    answer_types: torch.Tensor | None = None  # (N,)
    question_types: torch.Tensor | None = None  # (N,)
    # Sparse soft targets: question i has scores target_scores[s:e] at target_indices[s:e], s, e = target_offsets[i:i+2]
    target_offsets: torch.Tensor | None = None  # (N + 1,)
    target_indices: torch.Tensor | None = None
    target_scores: torch.Tensor | None = None
    target_boxes: torch.Tensor | None = None  # (N, 4), zeros where has_target is False
    has_target: torch.Tensor | None = None  # (N,) bool
    human_answers: list[list[str]] | None = None  # (N, n) raw strings
    answer_seen: torch.Tensor | None = None  # (N,) bool

    def __len__(self) -> int:
        return len(self.question_ids)

    @property
    def annotated(self) -> bool:
        return self.gt_answers is not None


def without_blank(
    questions: list[dict], annotations: list[dict] | None
) -> tuple[list, list | None, dict[str, int]]:
    """The questions (and their annotations) less those with nothing to learn or score from: a blank question, or a
    `multiple_choice_answer` empty once normalised; with the count of each kind dropped, and of the blank human
    answers of the questions kept (kept: the official accuracy scores all ten)."""
    by_id = {a["question_id"]: a for a in annotations} if annotations is not None else {}
    counts = {"blank questions": 0, "blank answers": 0, "blank human answers kept": 0}
    kept = []
    for q in questions:
        ann = by_id.get(q["question_id"])
        if blank(q["question"]):
            counts["blank questions"] += 1
        elif ann is not None and blank_answer(ann.get("multiple_choice_answer", "x")):
            counts["blank answers"] += 1
        else:
            kept.append(q)
            if ann is not None:
                counts["blank human answers kept"] += sum(blank_answer(a["answer"]) for a in ann["answers"])
    if annotations is None:
        return kept, None, counts
    ids = {q["question_id"] for q in kept}
    return kept, [a for a in annotations if a["question_id"] in ids], counts


def blank_report(name: str, counts: dict[str, int]) -> str | None:
    """One line for `without_blank`'s counts, None when there is nothing to say."""
    dropped = {k: v for k, v in counts.items() if v and k != "blank human answers kept"}
    parts = [f"skipped {v} questions with {k}" for k, v in dropped.items()]
    if counts.get("blank human answers kept"):
        parts.append(
            f"{counts['blank human answers kept']} blank human answers kept (the official accuracy scores them)"
        )
    return f"{name}: {'; '.join(parts)}" if parts else None


def build_split(
    questions: list[dict],
    annotations: list[dict] | None,
    vocab: Vocabulary,
    answers: AnswerVocabulary,
    name: str = "questions",
) -> VQASplit:
    """Tensors of one split, questions in file order. `name` prefixes error messages (the file)."""
    qid = torch.tensor([q["question_id"] for q in questions], dtype=torch.long)
    split = VQASplit(
        question_ids=qid,
        image_ids=torch.tensor([q["image_id"] for q in questions], dtype=torch.long),
        questions=vocab.encode_batch([q["question"] for q in questions], field=f"{name}: question"),
    )
    if annotations is None:
        return split
    by_id = {ann["question_id"]: ann for ann in annotations}
    missing = [int(i) for i in qid if int(i) not in by_id]
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} questions have no annotation (first: question id {missing[0]})"
        )
    ordered = [by_id[int(i)] for i in qid]
    gt, offsets, indices, scores, atypes, qtypes = [], [0], [], [], [], []
    atype_index = {t: i for i, t in enumerate(answers.answer_types)}
    qtype_index = {t: i for i, t in enumerate(answers.question_types)}
    for ann in ordered:
        human = [a["answer"] for a in ann["answers"]]
        gt.append(gt_answer_indices(human, answers.index))
        i, s = soft_scores_of_indices(gt[-1])
        indices += i
        scores += s
        offsets.append(len(indices))
        try:
            atypes.append(atype_index[ann["answer_type"]])
            qtypes.append(qtype_index[ann["question_type"]])
        except KeyError as err:
            raise ValueError(
                f"{name}: question {ann['question_id']} has type {err}, not in the answer vocabulary "
                "(built before this split existed? delete answer_vocab.json to rebuild it)"
            ) from None
    if len({len(g) for g in gt}) > 1:
        raise ValueError(
            f"{name}: questions have different numbers of human answers ({sorted({len(g) for g in gt})})"
        )
    split.gt_answers = torch.tensor(gt, dtype=torch.long)
    split.human_answers = [[a["answer"] for a in ann["answers"]] for ann in ordered]
    if any("answer_seen" in ann for ann in ordered):
        split.answer_seen = torch.tensor([bool(ann.get("answer_seen", True)) for ann in ordered])
    split.answer_types = torch.tensor(atypes, dtype=torch.long)
    split.question_types = torch.tensor(qtypes, dtype=torch.long)
    split.target_offsets = torch.tensor(offsets, dtype=torch.long)
    split.target_indices = torch.tensor(indices, dtype=torch.long)
    split.target_scores = torch.tensor(scores, dtype=torch.float32)
    if any("target_box" in ann for ann in ordered):
        split.has_target = torch.tensor(["target_box" in ann for ann in ordered])
        split.target_boxes = torch.tensor(
            [ann.get("target_box", [0.0] * 4) for ann in ordered], dtype=torch.float32
        )
    return split


class VQASet(Dataset):
    """Items are question positions; `collate` builds the whole batch, regions included."""

    def __init__(self, split: VQASplit, num_answers: int, regions: RegionBatcher) -> None:
        self.split = split
        self.num_answers = num_answers
        self.regions = regions

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> VQABatch:
        s = self.split
        idx = torch.as_tensor(indices)
        image_ids = s.image_ids[idx]
        batch = VQABatch(s.question_ids[idx], image_ids, self.regions(image_ids.tolist()), s.questions[idx])
        if s.annotated:
            targets = torch.zeros(len(indices), self.num_answers)  # (B, A)
            for row, i in enumerate(indices):
                start, end = int(s.target_offsets[i]), int(s.target_offsets[i + 1])
                targets[row, s.target_indices[start:end]] = s.target_scores[start:end]
            batch.targets = targets
            batch.gt_answers = s.gt_answers[idx]
            batch.answer_types = s.answer_types[idx]
            batch.question_types = s.question_types[idx]
            batch.human_answers = [s.human_answers[i] for i in indices]
        if s.answer_seen is not None:
            batch.answer_seen = s.answer_seen[idx]
        if s.has_target is not None:
            batch.target_boxes, batch.has_target = s.target_boxes[idx], s.has_target[idx]
        return batch


class VQADataModule(RegionDataModule):
    """Region features + tokenized questions + soft targets; `test_split` names the split tested and predicted.

    Takes `RegionDataModule`'s loader and store arguments besides its own.
    """

    def __init__(
        self,
        data_dir: str,
        questions: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        question_vocab: str = "question_vocab.json",
        answer_vocab: str = "answer_vocab.json",
        min_word_count: int = 1,
        max_length: int = 14,
        min_answer_count: int = 9,
        glove: str | None = None,
        batch_size: int = 512,
        eval_batch_size: int = 512,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        q_names = questions or {s: f"vqa_{s}_questions.json" for s in SPLITS}
        a_names = annotations or {s: f"vqa_{s}_annotations.json" for s in SPLITS}
        self.question_paths = {s: self.data_dir / q_names[s] for s in q_names}
        self.split_files = self.question_paths
        # A split without an annotation file (test-dev, test-std) is answered but not scored.
        self.annotation_paths = {s: self.data_dir / a_names[s] for s in a_names}
        self.question_vocab_path = self.data_dir / question_vocab
        self.answer_vocab_path = self.data_dir / answer_vocab
        self.min_word_count = min_word_count
        self.max_length = max_length
        self.min_answer_count = min_answer_count
        self.glove = glove
        self.splits: dict[str, VQASplit] = {}
        self._image_files: dict[str, tuple[dict[int, str], list[str]]] = {}
        self._vocab: Vocabulary | None = None
        self._answers: AnswerVocabulary | None = None

    def _annotations(self, split: str) -> list[dict] | None:
        path = self.annotation_paths.get(split)
        return load_vqa_annotations(path) if path is not None and path.exists() else None

    def build_vocabularies(self) -> None:
        if not self.question_vocab_path.exists():
            texts = [q["question"] for q in load_vqa_questions(self.question_paths["train"])]
            vocab = Vocabulary.build(texts, min_count=self.min_word_count, max_length=self.max_length)
            vocab.save(self.question_vocab_path)
        if not self.answer_vocab_path.exists():
            train = self._annotations("train")
            if train is None:
                raise FileNotFoundError(
                    f"{self.annotation_paths.get('train')}: training annotations not found"
                )
            missing = [a["question_id"] for a in train if "multiple_choice_answer" not in a]
            if missing:
                raise ValueError(
                    f"{self.annotation_paths['train']}: question {missing[0]} has no multiple_choice_answer"
                )
            annotated = [train] + [
                a for s in self.annotation_paths if s != "train" and (a := self._annotations(s))
            ]
            AnswerVocabulary.build(train, annotated, self.min_answer_count).save(self.answer_vocab_path)

    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            self._vocab = Vocabulary.load(self.question_vocab_path)
        return self._vocab

    @property
    def answers(self) -> AnswerVocabulary:
        if self._answers is None:
            self._answers = AnswerVocabulary.load(self.answer_vocab_path)
            if not self._answers.answers:  # a classifier over no answers fails deep in training otherwise
                raise FormatError(
                    f"{self.answer_vocab_path}: no candidate answers (min_count {self._answers.min_count}); "
                    "rebuild it with a smaller min answer count (vqacap prepare vqa2 --min-answer-count)"
                )
        return self._answers

    def model_kwargs(self) -> dict:
        """What the LightningModule needs from the data, once: vocabularies, feature size, the split it tests."""
        kwargs = {
            "words": self.vocab.words,
            "answers": self.answers.answers,
            "answer_types": self.answers.answer_types,
            "question_types": self.answers.question_types,
            "feature_dim": self.feature_dim,
            "test_split": self.test_split,
        }
        if self.glove:
            kwargs["word_embeddings"] = load_glove(self.glove, self.vocab.words)
        return kwargs

    def load_split(self, split: str) -> VQASplit:
        """The tensors of the split (built once)."""
        self.check_split(split)
        if split not in self.splits:
            path = self.question_paths[split]
            questions = load_vqa_questions(path)
            missing = [q["image_id"] for q in questions if q["image_id"] not in self.store]
            if missing:
                raise RegionStoreError(
                    f"{self.store_path}: {len(missing)} images of {path} are not in the store (first: image id {missing[0]})"
                )
            annotations = self._annotations(split)
            if (
                annotations is not None
            ):  # an unannotated split (test-dev) is answered whole, as the server expects
                questions, annotations, counts = without_blank(questions, annotations)
                if report := blank_report(str(path), counts):
                    log.warning(report)
            self.splits[split] = build_split(questions, annotations, self.vocab, self.answers, str(path))
        return self.splits[split]

    def eval_set(self, split: str) -> VQASet:
        return VQASet(self.load_split(split), len(self.answers), self.batcher())

    def train_set(self) -> VQASet:
        return self.eval_set("train")

    # -- examples and image files, for attention maps ----------------------------------------------------------------
    def example_ids(self, split: str, count: int) -> list[int]:
        """`count` question ids spread evenly over the split in file order: the same questions every call."""
        return spread(self.load_split(split).question_ids.tolist(), count)

    def examples(self, split: str, question_ids: list[int]) -> VQABatch:
        """A batch of these questions of the split."""
        position = {q: i for i, q in enumerate(self.load_split(split).question_ids.tolist())}
        unknown = [q for q in question_ids if int(q) not in position]
        if unknown:
            raise ValueError(f"{self.question_paths[split]}: no question with id {unknown[0]}")
        return self.eval_set(split).collate([position[int(q)] for q in question_ids])

    def image_path(
        self, split: str, image_id: int, image_root: str | os.PathLike | None = None
    ) -> Path | None:
        """The file of a question's image under `image_root` (default: `image_dir`, else the data folder), None when
        not found.

        VQA questions name no files: the image records of `captions_<split>.json` are used when the folder has one
        (Shapes writes both), else the official COCO naming `<subtype>/COCO_<subtype>_<image_id:012d>.jpg` of the
        questions file's `data_subtype` (train2014, val2014, test2015, or two joined by '+'), else a plain folder of
        images named by id (`RegionDataModule.find_image`).
        """
        root = Path(image_root or self.image_dir or self.data_dir)
        if split not in self._image_files:
            captions = self.data_dir / f"captions_{split}.json"
            images = load_caption_annotations(captions)[1] if captions.is_file() else {}
            questions = {} if images else json.loads(self.question_paths[split].read_text())
            subtype = questions.get("data_subtype", "")
            files = {i: im["file_name"] for i, im in images.items() if "file_name" in im}
            self._image_files[split] = (files, [s for s in str(subtype).split("+") if s])
        files, subtypes = self._image_files[split]
        name = files.get(int(image_id))
        candidates = [name] if name else [f"{s}/COCO_{s}_{int(image_id):012d}.jpg" for s in subtypes]
        found = next((root / c for c in candidates if (root / c).is_file()), None)
        return found or self.find_image(image_id, image_root)
