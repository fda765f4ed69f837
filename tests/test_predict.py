"""ptl-predict and the Predictor API: answers equal the plain transformers forward and
ptl-eval's predictions, mixed-relation batches equal one relation at a time, and bad queries
or prompts are refused by name."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ptuning_lightning.job import run
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.predict import Predictor, predict_job
from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.prompting.encoders import export_prompt, read_prompt

LAMA = ROOT / "data" / "lama"
# Three relations with different templates: another prompt length, and an answer slot without
# a space before it (its candidates are other tokens: a second candidate set in each batch).
TEMPLATES = {
    "P1376": "[P*3] [X] [P*3] [Y] [P*3]",
    "P37": "[P*2] [X] [P] [Y]",
    "P108": "[P] [X] works for[Y]",
}


def export_random_prompts(backbone, folder: Path, templates: dict[str, str]) -> Path:
    """A run folder of exported prompts, ``<folder>/<relation>/prompt.pt``, with random rows at
    the scale of the backbone's embeddings (seeded)."""
    generator = torch.Generator().manual_seed(0)
    scale = float(backbone.embeddings.std())
    for relation, template in templates.items():
        data = lama_data(backbone, relation, template)
        rows = torch.randn(data.template.n_prompt, backbone.hidden_size, generator=generator)
        export_prompt(folder / relation / "prompt.pt", rows * scale, template, backbone, relation)
    return folder


@functools.cache
def lama_data(backbone, relation: str, template: str) -> LamaDataModule:
    """The relation's splits and 29k candidates under ``template`` (cached: read-only use)."""
    data = LamaDataModule(
        str(LAMA), relation, backbone.tokenizer, backbone.kind, template, vocab_key="gpt2-xl"
    )
    data.setup()
    return data


def first_test_facts(backbone, n: int = 5) -> list[dict]:
    """The first ``n`` test facts of each relation, as queries with their gold object."""
    queries = []
    for relation, template in TEMPLATES.items():
        facts = lama_data(backbone, relation, template).datasets["test"][:n]
        queries += [{"relation": relation, "sub": f["sub"], "obj": f["obj"]} for f in facts]
    return queries


@pytest.fixture
def predictor(backbone, tmp_path) -> Predictor:
    """The three relations' random prompts on each tiny backbone."""
    folder = export_random_prompts(backbone, tmp_path / "run", TEMPLATES)
    return Predictor.load(folder, backbone=backbone, vocab_key="gpt2-xl")


def plain_answer(
    backbone, folder: Path, query: dict, top_k: int
) -> tuple[list[tuple[str, float]], int]:
    """The query's top-k candidates and the gold object's rank, by the transformers model's
    own forward: the prompt file's rows at the pseudo tokens, softmax over the LAMA 29k
    candidates of the relation's template."""
    relation = query["relation"]
    data = lama_data(backbone, relation, TEMPLATES[relation])
    example = next(e for e in data.datasets["test"] if e["sub"] == query["sub"])
    prompt = torch.load(folder / relation / "prompt.pt")["embeddings"]
    embeds = backbone.model.get_input_embeddings()(torch.tensor(example["input_ids"])).clone()
    for position, k in enumerate(example["prompt_index"]):
        if k >= 0:
            embeds[position] = prompt[k]
    with torch.no_grad():
        logits = backbone.model(inputs_embeds=embeds[None]).logits[0, example["answer_position"]]
    probs = logits[data.candidate_ids].softmax(-1)
    top = probs.topk(top_k)
    words = {int(t): w for t, w in zip(*candidate_words(data), strict=True)}
    answers = [(words[int(data.candidate_ids[i])], float(p)) for p, i in zip(*top, strict=True)]
    rank = 1 + int((probs > probs[example["target_index"]]).sum())
    return answers, rank


@functools.cache
def candidate_words(data: LamaDataModule) -> tuple[list[int], list[str]]:
    """Each candidate token with the first 29k word spelling it (cached per relation)."""
    vocab = json.loads((LAMA / "vocab" / "29k-vocab.json").read_text())["gpt2-xl"]
    first: dict[int, str] = {}
    for word in (w.removeprefix("Ġ") for w in vocab):
        ids = data.template_tokenizer.answer_ids(word)
        if len(ids) == 1:
            first.setdefault(ids[0], word)
    tokens = data.candidate_ids.tolist()
    return tokens, [first[t] for t in tokens]


def test_answers_are_the_plain_forwards_candidate_probabilities(backbone, tmp_path):
    """Top-3 words, their probabilities (softmax over the candidates) and the gold rank, for
    five test facts of each of three relations mixed in batches of 4."""
    folder = export_random_prompts(backbone, tmp_path / "run", TEMPLATES)
    predictor = Predictor.load(folder, backbone=backbone, vocab_key="gpt2-xl", batch_size=4)
    queries = first_test_facts(backbone)
    answers = predictor.predict(queries, top_k=3)
    for query, answer in zip(queries, answers, strict=True):
        expected, rank = plain_answer(backbone, folder, query, top_k=3)
        assert answer["relation"] == query["relation"] and answer["sub"] == query["sub"]
        assert [a["obj"] for a in answer["answers"]] == [w for w, _ in expected]
        got = torch.tensor([a["probability"] for a in answer["answers"]])
        torch.testing.assert_close(
            got, torch.tensor([p for _, p in expected]), rtol=1e-4, atol=1e-6
        )
        assert (answer["obj"], answer["rank"]) == (query["obj"], rank)


def test_mixed_batches_answer_as_one_relation_at_a_time(predictor, backbone):
    """The same queries, mixed three relations per batch or asked relation by relation."""
    queries = first_test_facts(backbone, n=8)
    mixed = predictor.predict(queries, top_k=5)
    alone = []
    for relation in TEMPLATES:
        alone += predictor.predict([q for q in queries if q["relation"] == relation], top_k=5)
    assert len(mixed) == len(alone) == 24
    for a, b in zip(mixed, alone, strict=True):
        assert [x["obj"] for x in a["answers"]] == [x["obj"] for x in b["answers"]]
        assert a["rank"] == b["rank"]
        for x, y in zip(a["answers"], b["answers"], strict=True):
            assert x["probability"] == pytest.approx(y["probability"], rel=1e-4, abs=1e-7)


def test_top_answer_is_ptl_evals_prediction(gpt2, tmp_path, compose_cfg):
    """On every test fact of two relations, the top answer is the word ptl-eval prompt=exported
    predicted for it (``test_predictions`` in results.json), and the share of top answers equal
    to the gold object is ptl-eval's test P@1."""
    folder = export_random_prompts(gpt2, tmp_path / "run", {"P1376": TEMPLATES["P1376"]})
    overrides = [
        "backbone=tiny-gpt2",
        "prompt=exported",
        f"prompt.path={folder}",
        "task.relation=P1376",
    ]
    run(compose_cfg("eval", tmp_path / "eval", overrides))
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["relations"]["P1376"]
    facts = lama_data(gpt2, "P1376", TEMPLATES["P1376"]).datasets["test"]
    queries = [{"relation": "P1376", "sub": f["sub"], "obj": f["obj"]} for f in facts]
    answers = Predictor.load(folder, backbone=gpt2, vocab_key="gpt2-xl").predict(queries, top_k=1)
    top = [a["answers"][0]["obj"] for a in answers]
    assert top == evaluated["test_predictions"]
    assert sum(a["rank"] == 1 for a in answers) / len(answers) == pytest.approx(
        evaluated["test_p1"]
    )


def predict_config(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "predict",
            overrides=[
                f"paths.output_dir={tmp_path}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                *overrides,
            ],
        )


def test_ptl_predict_reads_jsonl_and_writes_answers(gpt2, tmp_path):
    """A queries file in, one answer line per query out, in order, with the gold's rank where
    the line has an ``obj``; queries on the command line give the same answers."""
    folder = export_random_prompts(gpt2, tmp_path / "sweep" / "prompt=ptuning", TEMPLATES)
    queries = first_test_facts(gpt2, n=2)
    queries[1].pop("obj")
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    common = ["backbone=tiny-gpt2", f"prompt.path={folder.parent}", "top_k=2"]
    output = tmp_path / "out" / "answers.jsonl"
    predict_job(
        predict_config(
            tmp_path, [*common, f"input={tmp_path / 'queries.jsonl'}", f"output={output}"]
        )
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(a["relation"], a["sub"]) for a in lines] == [
        (q["relation"], q["sub"]) for q in queries
    ]
    assert all(len(a["answers"]) == 2 for a in lines)
    assert "rank" in lines[0] and "rank" not in lines[1]
    first = queries[0]
    inline = (
        f"queries=[{{relation: {first['relation']}, sub: '{first['sub']}', obj: {first['obj']}}}]"
    )
    (answer,) = predict_job(predict_config(tmp_path, [*common, inline]))
    # alone vs in a padded batch of two: the same answers, probabilities up to float rounding
    expected = lines[0]
    assert {k: v for k, v in answer.items() if k != "answers"} == {
        k: v for k, v in expected.items() if k != "answers"
    }
    assert [a["obj"] for a in answer["answers"]] == [a["obj"] for a in expected["answers"]]
    assert [a["probability"] for a in answer["answers"]] == pytest.approx(
        [a["probability"] for a in expected["answers"]], rel=1e-5
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"relation": "P999", "sub": "Lyon"}, "line 2: relation 'P999' is not a LAMA relation"),
        (
            {"relation": "P19", "sub": "Lyon"},
            "line 2: relation 'P19' has no loaded prompt; loaded: P108, P1376, P37",
        ),
        ({"relation": "P37", "sub": "  "}, "line 2: 'sub' must be a non-empty string"),
        ({"relation": "P37", "sub": "Lyon", "obj": ""}, "line 2: 'obj' must be a non-empty string"),
    ],
    ids=["unknown relation", "not loaded", "empty subject", "empty object"],
)
def test_bad_query_is_refused_naming_its_line(gpt2, tmp_path, line, message):
    folder = export_random_prompts(gpt2, tmp_path / "run", TEMPLATES)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        json.dumps({"relation": "P37", "sub": "Belgium"}) + "\n" + json.dumps(line) + "\n"
    )
    cfg = predict_config(
        tmp_path, ["backbone=tiny-gpt2", f"prompt.path={folder}", f"input={queries}"]
    )
    with pytest.raises(ValueError, match=f"{queries}, {message}"):
        predict_job(cfg)


def test_prompts_for_something_else_are_refused(gpt2, bert, tmp_path):
    """Another backbone's prompt, two prompts of one relation, a SuperGLUE task's prompt."""
    folder = export_random_prompts(gpt2, tmp_path / "a", {"P37": TEMPLATES["P37"]})
    with pytest.raises(
        ValueError, match=r"backbone \(backbone.name\) is 'tiny-gpt2', not 'tiny-bert'"
    ):
        Predictor.load(folder, backbone=bert, vocab_key="gpt2-xl")
    again = export_random_prompts(gpt2, tmp_path / "b", {"P37": TEMPLATES["P37"]})
    with pytest.raises(
        ValueError, match="relation P37 has two prompts: .*a/P37/prompt.pt and .*b/P37/prompt.pt"
    ):
        Predictor.load([folder, again], backbone=gpt2, vocab_key="gpt2-xl")
    glue = tmp_path / "rte" / "prompt.pt"
    export_prompt(
        glue, torch.zeros(2, gpt2.hidden_size), "[premise] ? [P*2] [hypothesis] [Y]", gpt2, "rte"
    )
    with pytest.raises(
        ValueError, match="trained for 'rte', whose template .* is not a LAMA relation's"
    ):
        Predictor(gpt2, [read_prompt(glue, gpt2)], vocab_key="gpt2-xl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no prompt.pt under .*empty"):
        Predictor.load(tmp_path / "empty", backbone=gpt2)
    with pytest.raises(FileNotFoundError, match="prompt.path: .*missing does not exist"):
        Predictor.load(tmp_path / "missing", backbone=gpt2)


def test_own_candidate_words(gpt2, tmp_path):
    """A user's word list: the probabilities are a distribution over exactly those words; a
    word that is not one token in the answer slot is refused, naming it."""
    folder = export_random_prompts(gpt2, tmp_path / "run", {"P37": TEMPLATES["P37"]})
    words = ["French", "English", "Dutch", "German"]
    answers = Predictor.load(folder, backbone=gpt2, candidates=words).predict(
        [{"relation": "P37", "sub": "Belgium"}], top_k=10
    )[0]["answers"]
    assert sorted(a["obj"] for a in answers) == sorted(words)
    assert sum(a["probability"] for a in answers) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"candidates: \['Flemish-Walloon'\] are not one token"):
        Predictor.load(folder, backbone=gpt2, candidates=[*words, "Flemish-Walloon"])


def test_queries_from_exactly_one_place(tmp_path):
    """ptl-predict needs input= or queries=, and refuses both, before anything loads."""
    common = ["backbone=tiny-gpt2", "prompt.path=unused"]
    with pytest.raises(
        ValueError, match=r"input=<file.jsonl> or queries=\[...\] \(neither given\)"
    ):
        predict_job(predict_config(tmp_path, common))
    both = [*common, "input=q.jsonl", "queries=[{relation: P37, sub: Belgium}]"]
    with pytest.raises(ValueError, match=r"\(both given\)"):
        predict_job(predict_config(tmp_path, both))
