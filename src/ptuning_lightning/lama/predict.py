"""Use learned prompts: answer (relation, subject) queries with the prompts ptl-train exported.

A ``Predictor`` holds one frozen backbone and the exported prompts (``prompt.pt``) of any
number of relations, read from run folders, sweep folders or files. A query names a relation
and a subject; its answer ranks the relation's candidate words by the probability the backbone
gives them at the answer slot, with that relation's prompt in place. Probabilities are
normalised over the candidates: the LAMA vocabulary filter (as ptl-eval scores P@1, so the top
answer is the one ptl-eval counts), the whole vocabulary, or the user's own words.

Queries of different relations share batches: every example carries its relation's index and
gets that relation's prompt (the one pass's ``OnePassModule.prompt_rows``), so a file of mixed
queries goes through the backbone once, in batches of similar lengths, through Lightning's
``Trainer.predict`` (any accelerator, a progress bar). ``ptl-predict`` (``predict_job``) is the
command line over the same class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ptuning_lightning.data.batching import EvalShardSampler, collate
from ptuning_lightning.data.jsonl import DataError, read_jsonl_lines
from ptuning_lightning.lama.data import VOCABS, candidate_words, lama_relations, vocabulary
from ptuning_lightning.lama.one_pass import OnePassModule
from ptuning_lightning.launch.builders import build_trainer, load_backbone
from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import ExportedPrompt, FixedPrompt, read_prompt
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer, slot_names

log = logging.getLogger(__name__)

DATA_ROOT = ROOT / "data" / "lama"  # the bundled LAMA data: its vocabulary files
PROMPT_FILE = "prompt.pt"


class PredictModule(OnePassModule):
    """The one pass's module over fixed prompts: ``predict_step`` ranks every example's
    candidates (its candidate set's row of ``candidate_masks``) with its relation's prompt."""

    def __init__(
        self,
        backbone: Backbone,
        prompts: list[torch.Tensor],
        candidate_masks: torch.Tensor,
        top_k: int = 5,
    ) -> None:
        """``prompts``: each relation's embeddings (n_r, H); ``candidate_masks`` (S, V): the
        tokens of each candidate set."""
        empty = torch.empty(0, dtype=torch.long)
        super().__init__(backbone, empty, [FixedPrompt(p) for p in prompts], active=set())
        self.register_buffer("candidate_masks", candidate_masks, persistent=False)
        self.top_k = top_k

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        """Per example: the ``top_k`` candidates (token ids) with their log-probabilities, and
        the gold token's rank among the candidates (-1 without a gold candidate)."""
        logits = self.scores(batch, self.prompt_rows(batch), candidates=False)
        allowed = self.candidate_masks[batch["candidates"]]
        log_probs = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
        top = log_probs.topk(min(self.top_k, log_probs.size(-1)), dim=-1)
        gold = batch["gold"]
        gold_score = log_probs.gather(1, gold.clamp(min=0).unsqueeze(1))
        rank = 1 + (log_probs > gold_score).sum(-1)
        return {
            "index": batch["index"],
            "ids": top.indices,
            "log_probs": top.values,
            "rank": torch.where(gold >= 0, rank, -1),
        }


class Predictor:
    """Exported prompts of LAMA relations on one backbone, answering queries.

    >>> predictor = Predictor.load("logs/demo")  # every prompt.pt under the folder
    >>> predictor.predict([{"relation": "P37", "sub": "Padasjoki"}], top_k=1)[0]["answers"]
    [{'obj': 'Norwegian', 'probability': 0.345...}]
    """

    def __init__(
        self,
        backbone: Backbone,
        prompts: list[ExportedPrompt],
        candidates: str | list[str] = "29k",
        vocab_key: str | None = None,
        data_root: str | Path = DATA_ROOT,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        """``prompts``: one per relation (``read_prompt``); ``candidates``: ``29k`` or ``34k``
        (LAMA's word lists, as ``task.vocab``: single-token words only, the list of
        ``vocab_key``), ``full`` (every token), a list of words or a text file of one word per
        line (each must be one token in the answer slot); ``batch_size`` queries per batch;
        ``max_length`` as ``task.max_length``."""
        self.backbone, self.data_root, self.batch_size = backbone, Path(data_root), batch_size
        self.paths: dict[str, Path] = {}
        for prompt in prompts:
            _refuse_non_lama(prompt)
            if prompt.trained_for in self.paths:
                raise ValueError(
                    f"relation {prompt.trained_for} has two prompts: "
                    f"{self.paths[prompt.trained_for]} and {prompt.path}; load one of them"
                )
            self.paths[prompt.trained_for] = prompt.path
        if not prompts:
            raise ValueError("Predictor: no prompts to answer with")
        self.relations = list(self.paths)
        self.template_tokenizers = [
            TemplateTokenizer(
                Template.parse(p.template), backbone.tokenizer, backbone.kind, max_length
            )
            for p in prompts
        ]
        words, own = self._candidate_list(candidates, vocab_key)
        # one candidate set per spacing of the answer slot (its words' tokens differ)
        spacing = [t.template.answer_space for t in self.template_tokenizers]
        self.spaces = sorted(set(spacing))
        self.words: list[dict[int, str]] = []
        for space in self.spaces:
            tokenizer = self.template_tokenizers[spacing.index(space)]
            self.words.append(self._candidate_set(words, tokenizer, own))
        # as wide as the logits (an embedding table may have rows past the tokenizer's)
        masks = torch.zeros(len(self.spaces), backbone.embeddings.size(0), dtype=torch.bool)
        for s, tokens in enumerate(self.words):
            masks[s, list(tokens)] = True
        self.module = PredictModule(backbone, [p.embeddings for p in prompts], masks)

    @classmethod
    def load(
        cls,
        paths: str | Path | Iterable[str | Path],
        backbone: Backbone | str | None = None,
        vocab_key: str | None = None,
        **options,
    ) -> Predictor:
        """The prompts under ``paths`` (run or sweep folders: every ``prompt.pt`` below them;
        or files) on ``backbone``: a loaded one, the name of a ``conf/backbone/`` config, or
        None for the backbone the prompts record. ``options``: as ``Predictor``."""
        files = prompt_files(paths)
        if not isinstance(backbone, Backbone):
            cfg = backbone_config(backbone or recorded_backbone(files))
            backbone, vocab_key = load_backbone(cfg), vocab_key or cfg.backbone.vocab_key
        prompts = [read_prompt(path, backbone) for path in files]
        return cls(backbone, prompts, vocab_key=vocab_key, **options)

    def _candidate_list(
        self, candidates: str | list[str], vocab_key: str | None
    ) -> tuple[list[str] | None, bool]:
        """The candidate words (None: every token), and whether the user chose them."""
        if not isinstance(candidates, str):
            return [str(w) for w in candidates], True
        if candidates in VOCABS:
            if candidates != "full" and vocab_key is None:
                raise ValueError(
                    f"candidates={candidates}: LAMA's word lists need the backbone's vocab_key "
                    "(backbone.vocab_key, e.g. gpt2-xl or bert-base-cased)"
                )
            return vocabulary(str(self.data_root), candidates, vocab_key or ""), False
        path = Path(candidates)
        if not path.is_file():
            raise DataError(
                f"candidates: {candidates!r} is neither one of {list(VOCABS)} nor a word file"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        return [w.strip() for w in lines if w.strip()], True

    def _candidate_set(
        self, words: list[str] | None, tokenizer: TemplateTokenizer, own: bool
    ) -> dict[int, str]:
        """{token id: word} of one answer spacing. A word of the user's own list that is not
        one token there is refused: it could never be an answer."""
        if words is None:
            vocab = range(len(self.backbone.tokenizer))
            return {t: self.backbone.tokenizer.decode([t]).strip() for t in vocab}
        chosen = candidate_words(words, tokenizer)
        if own:
            several = [w for w in words if len(tokenizer.answer_ids(w)) != 1]
            if several:
                raise DataError(
                    f"candidates: {several[:5]} are not one token of {self.backbone.name} in "
                    "the answer slot, so they could never be answered; remove them"
                )
        if not chosen:
            raise DataError(f"candidates: no word is one token of {self.backbone.name}")
        return chosen

    def predict(
        self,
        queries: Iterable[dict],
        top_k: int = 5,
        trainer: L.Trainer | None = None,
    ) -> list[dict]:
        """One answer per query, in order: the query's ``relation`` and ``sub`` (and ``obj``
        with its ``rank`` among the candidates, None where it is no candidate), and
        ``answers``: the ``top_k`` candidates as ``{"obj": word, "probability": p}``.
        Errors name a query "query <n>", or the name of a (name, query) pair;
        ``trainer``: where to run (default: one device, the fastest found)."""
        named = [
            item if isinstance(item, tuple) else (f"query {n}", item)
            for n, item in enumerate(queries, start=1)
        ]
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not named:
            return []
        examples = [self._encode(name, query, i) for i, (name, query) in enumerate(named)]
        self.module.top_k = top_k
        lengths = [len(e["input_ids"]) for e in examples]
        loader = DataLoader(
            examples,
            batch_size=self.batch_size,
            sampler=EvalShardSampler(len(examples), lengths=lengths),  # longest first
            collate_fn=lambda batch: collate(batch, self.backbone.tokenizer.pad_token_id or 0),
        )
        trainer = trainer or quiet_trainer()
        outputs = trainer.predict(self.module, dataloaders=loader)
        answers: list[dict | None] = [None] * len(examples)
        for out in outputs:
            for i, ids, log_probs, rank in zip(
                out["index"].tolist(),
                out["ids"].tolist(),
                out["log_probs"].exp().tolist(),
                out["rank"].tolist(),
                strict=True,
            ):
                answers[i] = self._answer(named[i][1], examples[i], ids, log_probs, rank)
        return answers

    def _encode(self, name: str, query: dict, index: int) -> dict:
        """One query as an example of the batches; a bad query is refused by ``name``."""
        check_query(name, query, self.relations, self.data_root)
        r = self.relations.index(query["relation"])
        tokenizer = self.template_tokenizers[r]
        s = self.spaces.index(tokenizer.template.answer_space)
        gold = -1
        if "obj" in query:
            ids = tokenizer.answer_ids(query["obj"])
            gold = ids[0] if len(ids) == 1 and ids[0] in self.words[s] else -1
        encoded = tokenizer.encode({"X": query["sub"]}).fields()
        return {**encoded, "relation": r, "candidates": s, "gold": gold, "index": index}

    def _answer(
        self, query: dict, example: dict, ids: list[int], probs: list[float], rank: int
    ) -> dict:
        words = self.words[example["candidates"]]
        pairs = zip(ids, probs, strict=True)  # past the candidates' count: other tokens
        answers = [{"obj": words[t], "probability": p} for t, p in pairs if t in words]
        answer = {"relation": query["relation"], "sub": query["sub"]}
        if "obj" in query:
            answer |= {"obj": query["obj"], "rank": rank if rank > 0 else None}
        return answer | {"answers": answers}


def check_query(name: str, query: object, loaded: list[str], data_root: str | Path) -> None:
    """Refuse a query, by ``name``, that is no object, names a relation without a loaded
    prompt (or no LAMA relation), or has an empty ``sub`` (or ``obj``, where given)."""
    if not isinstance(query, dict):
        raise DataError(f"{name}: expected an object with relation and sub, got {query!r}")
    relation = query.get("relation")
    if relation not in loaded:
        known = lama_relations(data_root)
        what = "has no loaded prompt" if relation in known else "is not a LAMA relation"
        raise DataError(f"{name}: relation {relation!r} {what}; loaded: {', '.join(loaded)}")
    for key in ("sub", "obj") if "obj" in query else ("sub",):
        value = query.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{name}: {key!r} must be a non-empty string, got {value!r}")


def quiet_trainer(accelerator: str = "auto", progress: bool = False) -> L.Trainer:
    """A trainer for prediction alone: one device, no logger, checkpoints or summary, and
    without Lightning's device and tip lines, which it would print on every call."""
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_info.level
    lightning_info.setLevel(logging.WARNING)
    try:
        return L.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
        )
    finally:
        lightning_info.setLevel(level)


def prompt_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every ``prompt.pt`` of ``paths``: files as given, folders searched below them."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(path.rglob(PROMPT_FILE))
            if not found:
                raise FileNotFoundError(
                    f"prompt.path: no {PROMPT_FILE} under {path} (ptl-train exports "
                    f"<run>/<relation>/{PROMPT_FILE} for prompts over a frozen backbone)"
                )
            files += found
        else:
            raise FileNotFoundError(f"prompt.path: {path} does not exist")
    return files


def recorded(files: list[Path], key: str) -> list:
    """What each prompt file records under ``key`` (``PROMPT_METADATA``), before any check."""
    return [torch.load(f, map_location="cpu", weights_only=True).get(key) for f in files]


def recorded_backbone(files: list[Path]) -> str:
    """The one backbone every prompt file records having been trained on."""
    names = set(recorded(files, "backbone"))
    if len(names) != 1:
        trained_on = sorted(map(str, names))
        raise ValueError(f"the prompts were trained on different backbones: {trained_on}")
    return names.pop()


def backbone_config(name: str) -> DictConfig:
    """``conf/predict.yaml`` with ``backbone=<name>`` (a file of ``conf/backbone/``)."""
    if not (Path(CONFIG_DIR) / "backbone" / f"{name}.yaml").is_file():
        raise ValueError(
            f"backbone {name!r} has no conf/backbone/{name}.yaml; pass a loaded Backbone "
            "(a re-initialised control backbone is rebuilt with backbone.control and seed)"
        )
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("predict", overrides=[f"backbone={name}", "paths.output_dir=."])


def _refuse_non_lama(prompt: ExportedPrompt) -> None:
    """A SuperGLUE task's prompt fills other slots than a LAMA relation's ``[X]``."""
    if slot_names(prompt.template) != ("X",):
        raise ValueError(
            f"{prompt.path}: trained for {prompt.trained_for!r}, whose template "
            f"{prompt.template!r} is not a LAMA relation's ([X] ... [Y]); ptl-predict answers "
            "LAMA relations"
        )


def read_queries(cfg: DictConfig) -> list[tuple[str, dict]]:
    """``input`` (a JSONL file) or ``queries`` (the command line), each query with the name
    that errors give it: ``<file>, line <n>`` or ``queries[<i>]``."""
    if bool(cfg.input) == bool(cfg.queries):
        given = "both" if cfg.input else "neither"
        raise ValueError(f"ptl-predict: give input=<file.jsonl> or queries=[...] ({given} given)")
    if cfg.input:
        lines = read_jsonl_lines(cfg.input)
        return [(f"{cfg.input}, line {n}", row) for n, row in lines]
    queries = OmegaConf.to_container(cfg.queries, resolve=True)
    return [(f"queries[{i}]", q) for i, q in enumerate(queries)]


def predict_job(cfg: DictConfig) -> list[dict]:
    """ptl-predict: the queries' answers, written to ``output`` (JSONL) or printed. Bad
    queries are refused before the backbone loads."""
    queries = read_queries(cfg)
    files = prompt_files(cfg.prompt.path)
    relations = sorted(set(map(str, recorded(files, "trained_for"))))
    for name, query in queries:
        check_query(name, query, relations, cfg.data_root)
    backbone = load_backbone(cfg)
    predictor = Predictor(
        backbone,
        [read_prompt(path, backbone) for path in files],
        candidates=cfg.candidates,
        vocab_key=cfg.backbone.vocab_key,
        data_root=cfg.data_root,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
    )
    answers = predictor.predict(queries, top_k=cfg.top_k, trainer=build_trainer(cfg))
    lines = "".join(json.dumps(answer) + "\n" for answer in answers)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(lines, encoding="utf-8")
        log.info("%d answers written to %s", len(answers), cfg.output)
    else:
        print(lines, end="")
    return answers
