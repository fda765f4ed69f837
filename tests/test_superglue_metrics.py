"""SuperGLUE metrics on hand-made cases whose values are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from ptuning_lightning.superglue.metrics import SuperGlueMetric, exact_match, token_f1


def one_hot(predictions: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), n).float()


def test_accuracy_and_cb_macro_f1():
    metric = SuperGlueMetric(("acc", "f1"), n_classes=3)
    # gold 0 0 1 2 2, predicted 0 1 1 2 0: class F1s 2*1/(2+1+1)=1/2, 2/3, 2/3
    metric.update(one_hot([0, 1, 1, 2, 0], 3), {"label": torch.tensor([0, 0, 1, 2, 2])})
    values = metric.compute()
    assert values["acc"].item() == pytest.approx(3 / 5)
    assert values["f1"].item() == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert values["score"].item() == pytest.approx((3 / 5 + (1 / 2 + 4 / 3) / 3) / 2)


def test_padding_copies_are_not_counted():
    metric = SuperGlueMetric(("acc",), n_classes=2)
    batch = {"label": torch.tensor([1, 0, 1]), "padding": torch.tensor([0, 0, 1])}
    metric.update(one_hot([1, 1, 0], 2), batch)
    assert metric.compute()["acc"].item() == pytest.approx(1 / 2)


def test_multirc_f1a_and_question_em():
    metric = SuperGlueMetric(("f1a", "em"), n_classes=2)
    # question 7: answers all right; question 8: one wrong -> EM 1/2.
    # class 1 ("true"): tp 2 (index 0, 3), fp 1 (index 4), fn 0 -> F1a 4/5
    batch = {"label": torch.tensor([1, 0, 0, 1, 0]), "group": torch.tensor([7, 7, 8, 8, 8])}
    metric.update(one_hot([1, 0, 0, 1, 1], 2)[:3], {k: v[:3] for k, v in batch.items()})
    metric.update(one_hot([1, 0, 0, 1, 1], 2)[3:], {k: v[3:] for k, v in batch.items()})
    values = metric.compute()
    assert values["f1a"].item() == pytest.approx(4 / 5)
    assert values["em"].item() == pytest.approx(1 / 2)


def test_record_token_f1_and_em_over_max_of_golds():
    assert exact_match("The Blues!", "blues") == 1.0
    assert token_f1("Diego Costa", "Costa") == pytest.approx(2 * 0.5 * 1 / 1.5)
    metric = SuperGlueMetric(("record_f1", "record_em"), n_classes=2)
    golds = ["Chelsea", "Chelsea FC"]
    candidates = ["Chelsea FC London", "Mourinho"]
    em = [[max(exact_match(c, g) for g in golds) for c in candidates], [0.0, 1.0]]
    f1 = [[max(token_f1(c, g) for g in golds) for c in candidates], [0.0, 1.0]]
    batch = {
        "label": torch.tensor([0, 1]),
        "candidate_em": torch.tensor(em),
        "candidate_f1": torch.tensor(f1),
    }
    metric.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), batch)  # picks 0 then 1
    values = metric.compute()
    assert values["record_em"].item() == pytest.approx((0 + 1) / 2)
    assert values["record_f1"].item() == pytest.approx((0.8 + 1) / 2)  # 2*(2/3)*1/(5/3)


def test_shards_merged_as_ddp_syncs_equal_one_process():
    """3 ranks over 7 MultiRC-like answers (2 padding copies), states merged as DDP's sync
    does (sums, and the concatenated question ids): the values of one process."""
    from ptuning_lightning.data.batching import EvalShardSampler, PaddedSplit

    labels, preds, groups = [1, 0, 0, 1, 0, 1, 1], [1, 0, 1, 1, 0, 0, 1], [1, 1, 2, 2, 3, 3, 4]
    examples = [{"i": i} for i in range(7)]

    def batch(items: list[dict]) -> tuple[torch.Tensor, dict]:
        index = [item["i"] for item in items]
        return one_hot([preds[i] for i in index], 2), {
            "label": torch.tensor([labels[i] for i in index]),
            "group": torch.tensor([groups[i] for i in index]),
            "padding": torch.tensor([item["padding"] for item in items]),
        }

    single = SuperGlueMetric(("acc", "f1a", "em"), n_classes=2)
    single.update(*batch([{**e, "padding": 0} for e in examples]))
    ranks = []
    for rank in range(3):
        metric = SuperGlueMetric(("acc", "f1a", "em"), n_classes=2)
        shard = [PaddedSplit(examples)[p] for p in EvalShardSampler(7, rank, world_size=3)]
        metric.update(*batch(shard))
        ranks.append(metric)
    for other in ranks[1:]:
        ranks[0].merge_state(other)
    merged, expected = ranks[0].compute(), single.compute()
    assert {k: v.item() for k, v in merged.items()} == pytest.approx(
        {k: v.item() for k, v in expected.items()}
    )
    assert expected["em"].item() == pytest.approx(2 / 4)  # questions 1 and 4 all right
