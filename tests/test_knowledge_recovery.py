"""P-Tuning recovers knowledge that a frozen LM holds but a mismatched manual prompt misses.

These tests check the method, not only shapes, in a small synthetic world where we know
exactly what the backbone knows:

1. Made-up subjects ("zorblat") each get two made-up objects ("kelvora") through two random
   relations, stated in a tiny corpus as ``[X] is living in [Y] .`` (the relation we probe) and
   ``[X] has been to [Y] .`` (a distractor over the same objects, never the same object).
2. A random tiny GPT-2 (causal) or BERT (masked) over a word-level vocabulary is "pretrained"
   on that corpus until it has memorised every fact, then frozen.
3. The subjects are split in half. Manual templates that do not match how the corpus states
   the relation (``[X] has been to [Y] .`` asks for the distractor; ``[X] enjoys [Y] .`` uses a
   verb the corpus never does) score far below the corpus's own template on the held-out half.
4. A continuous prompt ``[P*3] [X] [P*3] [Y] [P*3]`` (the tail after ``[Y]`` is dropped for
   the causal model) is trained with the project's ``PromptModule`` and a Lightning ``Trainer``
   on the first half only. On the held-out half, whose facts the prompt never saw, it recovers
   almost every fact. The prompt cannot have stored those facts, so it must steer the frozen
   model to the knowledge it already holds: the claim of P-Tuning. The backbone's weights are
   checked to be unchanged by prompt training.

Everything is seeded (``SEED``); ``run(kind, seed)`` repeats the experiment for another seed.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from ptuning_lightning.data.batching import collate
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.prompting.backbones import Backbone, build_tiny
from ptuning_lightning.prompting.encoders import MLPPromptEncoder
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer

SEED = 0
N_SUBJECTS = 80  # half train the prompt, half are held out
OBJECTS = ("kelvora", "brisant", "corvath", "dunmere", "elstow", "fennick", "galdor", "hollin")
PROBED = "[X] is living in [Y] ."  # how the corpus states the relation we probe
DISTRACTOR = "[X] has been to [Y] ."  # another relation of the corpus, over the same objects
MANUAL = DISTRACTOR  # a plausible manual template that asks for the wrong relation
UNSEEN = "[X] enjoys [Y] ."  # a manual template whose verb the corpus never uses
PTUNING = "[P*3] [X] [P*3] [Y] [P*3]"
MAX_OFFSET = 8  # pretraining shifts each statement's positions by up to this much
STOP_LOSS = 0.01  # pretraining stops once the loss over all facts is this low
# Prompt training with the MLP reparametrisation, Adam at 1e-3 with clipping and the project's
# learning-rate warmup (conf/train.yaml `warmup`). Seed 0 measured (torch 2.13, transformers
# 5.24): masked 1.0 on its training facts, 0.9 held out; causal 1.0 and 0.975. Without the
# warmup and with 300 steps the masked prompt reached only 0.70 / 0.625 (a slow start: its
# first Adam steps send it where every subject gets the same answer); with the warmup and 300
# steps 0.775 / 0.70; 1000 steps give it time to recover.
PROMPT_STEPS, PROMPT_LR, PROMPT_CLIP = 1000, 1e-3, 1.0
SPECIALS = {  # each kind's special tokens, as PreTrainedTokenizerFast arguments
    "causal": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
    "masked": {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
}


@dataclass(frozen=True)
class World:
    """Synthetic facts: ``relations[template][subject]`` is the object the corpus states."""

    subjects: tuple[str, ...]
    relations: dict[str, dict[str, str]]
    prompt_train: tuple[str, ...]  # subjects whose probed facts train the prompt
    held_out: tuple[str, ...]  # subjects whose probed facts only evaluate it

    def facts(self, template: str, subjects: tuple[str, ...]) -> list[tuple[str, str]]:
        return [(s, self.relations[template][s]) for s in subjects]


def make_world(seed: int, n_subjects: int = N_SUBJECTS) -> World:
    """Made-up subjects with a random object per relation (never the same one), split 50/50."""
    rng = random.Random(seed)
    syllables = [o + v + c for o in "bdfgklmnprstvz" for v in "aeiou" for c in "bklmnrx"]
    names = [a + b for a, b in itertools.product(syllables, repeat=2) if a != b]
    subjects = tuple(rng.sample(names, n_subjects))
    n = len(OBJECTS)
    probed = {s: rng.randrange(n) for s in subjects}
    other = {s: (probed[s] + rng.randrange(1, n)) % n for s in subjects}
    relations = {
        PROBED: {s: OBJECTS[probed[s]] for s in subjects},
        DISTRACTOR: {s: OBJECTS[other[s]] for s in subjects},
    }
    half = n_subjects // 2
    return World(subjects, relations, subjects[:half], subjects[half:])


def make_tokenizer(world: World, kind: str) -> PreTrainedTokenizerFast:
    """Word-level: every subject, object and template word is exactly one token."""
    specials = SPECIALS[kind]
    words = [w for t in (PROBED, DISTRACTOR, UNSEEN) for w in t.split() if not w.startswith("[")]
    vocab = list(dict.fromkeys([*specials.values(), *words, *OBJECTS, *world.subjects]))
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "masked":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[(t, ids[t]) for t in ("[CLS]", "[SEP]")]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def encode(backbone: Backbone, template: str, facts: list[tuple[str, str]]) -> list[dict]:
    """Examples as ``collate`` takes them, with the gold object as ``target_token`` (vocabulary
    id) and ``target_index`` (index among the candidates, ``OBJECTS``)."""
    coder = TemplateTokenizer(Template.parse(template), backbone.tokenizer, backbone.kind)
    examples = []
    for subject, obj in facts:
        encoded = coder.encode({"X": subject})
        (token,) = coder.answer_ids(obj)
        examples.append(
            {
                "input_ids": encoded.input_ids,
                "prompt_index": encoded.prompt_index,
                "answer_position": encoded.answer_position,
                "target_token": token,
                "target_index": OBJECTS.index(obj),
            }
        )
    return examples


def loader(backbone: Backbone, examples: list[dict], **options) -> DataLoader:
    """All examples in one batch: there are few, and small batches only add noise here."""
    pad = functools.partial(collate, pad_id=backbone.tokenizer.pad_token_id)
    return DataLoader(examples, batch_size=len(examples), collate_fn=pad, **options)


def pretrain(backbone: Backbone, world: World, seed: int, max_steps: int = 800) -> float:
    """Teach the whole model every fact of both relations (cross-entropy of the object at the
    answer slot over the vocabulary: the LM loss for causal, the MLM loss for masked) until it
    recalls them confidently, then freeze it again. Returns its recall of all facts.

    Each statement's position ids are shifted by a random 0 to ``MAX_OFFSET``, as if it sat
    somewhere inside a document. Without that the tiny BERT knows its facts only with the
    subject at position 1, and any prompt in front of ``[X]`` hides them."""
    examples = [
        example
        for template in world.relations
        for example in encode(backbone, template, world.facts(template, world.subjects))
    ]
    batch = next(iter(loader(backbone, examples)))
    positions = torch.arange(batch["input_ids"].size(1)).expand_as(batch["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    model = backbone.model
    model.requires_grad_(True)  # Backbone keeps it in eval mode: no dropout, faster memorising
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(max_steps):
        offsets = torch.randint(0, MAX_OFFSET + 1, (len(examples), 1), generator=generator)
        logits = answer_logits(backbone, batch, positions + offsets)
        loss = F.cross_entropy(logits, batch["target_token"])
        if loss.item() < STOP_LOSS:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.requires_grad_(False)
    with torch.no_grad():
        predicted = answer_logits(backbone, batch, positions).argmax(-1)
    return (predicted == batch["target_token"]).float().mean().item()


def answer_logits(
    backbone: Backbone, batch: dict[str, torch.Tensor], position_ids: torch.Tensor
) -> torch.Tensor:
    """Vocabulary logits at each example's answer slot."""
    hidden = backbone.body(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids,
    ).last_hidden_state
    return backbone.head(hidden[torch.arange(hidden.size(0)), batch["answer_position"]])


def trainer(**options) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def p_at_1(module: PromptModule, examples: list[dict]) -> float:
    """P@1 over the object words, through ``PromptModule.test_step`` and its metric."""
    return trainer().test(module, loader(module.backbone, examples), verbose=False)[0]["test/P@1"]


@dataclass
class Outcome:
    """What one run measured; every P@1 is on the held-out subjects unless named otherwise."""

    recall: float  # the pretrained model's recall of all facts of both relations
    true_template: float  # with the corpus's own template for the probed relation
    manual: float  # with the manual template that asks for the distractor relation
    unseen: float  # with the manual template whose verb the corpus never uses
    untrained: float  # with the P-Tuning template before prompt training
    ptuning_train: float  # the trained prompt on its own training facts
    ptuning: float  # the trained prompt
    backbone_unchanged: bool
    trainable: list[str]  # parameters that prompt training could change


def run(kind: str, seed: int = SEED) -> Outcome:
    """The whole experiment for one model kind (``causal`` or ``masked``)."""
    world = make_world(seed)
    backbone = build_tiny(
        f"tiny-{kind}",
        kind,
        corpus="",
        tokenizer=make_tokenizer(world, kind),
        layers=2,
        hidden=64,
        heads=2,
        seed=seed,
    )
    recall = pretrain(backbone, world, seed)
    candidates = torch.tensor(backbone.tokenizer.convert_tokens_to_ids(list(OBJECTS)))
    probed_train = encode(backbone, PTUNING, world.facts(PROBED, world.prompt_train))

    def held_out(template: str, module: PromptModule) -> float:
        return p_at_1(module, encode(backbone, template, world.facts(PROBED, world.held_out)))

    text_only = PromptModule(backbone, candidates)
    L.seed_everything(seed, verbose=False)
    encoder = MLPPromptEncoder(Template.parse(PTUNING).n_prompt, backbone.hidden_size)
    ptuning = PromptModule(
        backbone,
        candidates,
        encoder=encoder,
        optimizer=functools.partial(torch.optim.Adam, lr=PROMPT_LR),
        warmup=instantiate(OmegaConf.load(ROOT / "conf" / "train.yaml").warmup),
    )
    untrained = held_out(PTUNING, ptuning)
    weights = {name: w.clone() for name, w in backbone.named_parameters()}
    fit = trainer(max_steps=PROMPT_STEPS, gradient_clip_val=PROMPT_CLIP)
    fit.fit(ptuning, loader(backbone, probed_train))

    return Outcome(
        recall=recall,
        true_template=held_out(PROBED, text_only),
        manual=held_out(MANUAL, text_only),
        unseen=held_out(UNSEEN, text_only),
        untrained=untrained,
        ptuning_train=p_at_1(ptuning, probed_train),
        ptuning=held_out(PTUNING, ptuning),
        backbone_unchanged=all(torch.equal(w, weights[n]) for n, w in backbone.named_parameters()),
        trainable=[n for n, p in ptuning.named_parameters() if p.requires_grad],
    )


@pytest.fixture(scope="module", autouse=True)
def quiet_single_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, so more threads only add overhead, and on a
    busy machine their spin-waiting makes every step many times slower. Lightning's banners
    are silenced."""
    threads = torch.get_num_threads()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    torch.set_num_threads(1)
    lightning_log.setLevel(logging.WARNING)
    yield
    torch.set_num_threads(threads)
    lightning_log.setLevel(level)


@pytest.fixture(scope="module", params=["causal", "masked"])
def outcome(request: pytest.FixtureRequest) -> Outcome:
    return run(request.param)


# Thresholds leave a margin below what seeds 0-7 gave (see the numbers in each test).


def test_pretraining_stores_the_facts(outcome: Outcome) -> None:
    """The backbone knows the facts: the corpus's own template recovers the held-out ones
    (recall >= 0.975 and true-template P@1 = 1.0 measured)."""
    assert outcome.recall >= 0.95, outcome
    assert outcome.true_template >= 0.9, outcome


def test_manual_template_asking_for_the_distractor_misses(outcome: Outcome) -> None:
    """The model answers what the manual template asks: the distractor relation, whose
    object always differs from the probed one (P@1 <= 0.025 measured; chance is 1/8)."""
    assert outcome.manual <= 0.2, outcome


def test_ptuning_recovers_held_out_knowledge(outcome: Outcome) -> None:
    """A prompt trained on half the subjects recovers the other half's facts (0.9 and 0.975
    measured for seed 0), far better than both manual templates and the same prompt before training
    (those scored <= 0.475)."""
    assert outcome.ptuning_train >= 0.85, outcome
    assert outcome.ptuning >= 0.8, outcome
    assert outcome.ptuning >= outcome.manual + 0.6, outcome
    assert outcome.ptuning >= max(outcome.unseen, outcome.untrained) + 0.4, outcome


def test_prompt_training_leaves_the_backbone_frozen(outcome: Outcome) -> None:
    """Only the prompt encoder is trained; the backbone's weights are bit-for-bit unchanged."""
    assert outcome.backbone_unchanged
    assert outcome.trainable and all(n.startswith("encoder.") for n in outcome.trainable)
