"""The fast paths change cost, not results: PEFT-style computation, candidate-sliced logits,
length-grouped and length-sorted batches, gradient checkpointing, compile, bf16."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from test_module import lama_data
from transformers.modeling_layers import GradientCheckpointingLayer

from ptuning_lightning.data.batching import EpochShuffleSampler, EvalShardSampler
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import LSTMPromptEncoder
from ptuning_lightning.prompting.execution import configure_execution
from ptuning_lightning.prompting.templates import place_prompt


@functools.cache
def prefix_data(backbone: Backbone) -> LamaDataModule:
    """P1376 with every pseudo token in front: what PEFT's P-tuning computes."""
    data = LamaDataModule(
        str(ROOT / "data" / "lama"),
        "P1376",
        backbone.tokenizer,
        backbone.kind,
        template="[P*6] [X] [Y]",
        vocab_key="gpt2-xl",
        batch_size=4,
        seed=1,
    )
    data.setup()
    return data


def module_for(backbone: Backbone, data: LamaDataModule) -> PromptModule:
    torch.manual_seed(0)
    return PromptModule(
        backbone,
        data.candidate_ids,
        LSTMPromptEncoder(data.template.n_prompt, backbone.hidden_size),
    )


def full_logits_loss(backbone: Backbone, batch: dict, embeds: torch.Tensor) -> torch.Tensor:
    """The whole model's forward (full logits at every position), then the answer's."""
    logits = backbone.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    picked = logits[torch.arange(logits.size(0)), batch["answer_position"]]
    return F.cross_entropy(picked.float(), batch["target_token"])


def test_ours_equals_peft_style_prepended_prompt(gpt2) -> None:
    """PEFT prepends n virtual tokens to the text and computes full logits; ours places the
    same prompt at [P*n] and runs the head at the answer only: the same loss and gradient."""
    data = prefix_data(gpt2)
    module, batch = module_for(gpt2, data), next(iter(data.train_dataloader()))
    n = data.template.n_prompt
    ours = F.cross_entropy(module.scores(batch, module.prompt(), False), batch["target_token"])
    (ours_grad,) = torch.autograd.grad(ours, module.encoder.embedding.weight)

    prompt = module.prompt()
    text = gpt2.embed(batch["input_ids"][:, n:])
    prepended = torch.cat([prompt.expand(text.size(0), -1, -1), text], dim=1)
    peft = full_logits_loss(gpt2, batch, prepended)
    (peft_grad,) = torch.autograd.grad(peft, module.encoder.embedding.weight)
    torch.testing.assert_close(ours, peft)
    torch.testing.assert_close(ours_grad, peft_grad)


def test_ours_equals_full_forward_paper_template(backbone) -> None:
    """The paper's template (pseudo tokens around [X]): the same loss as a full forward."""
    data = lama_data(backbone)
    module, batch = module_for(backbone, data), next(iter(data.train_dataloader()))
    prompt = module.prompt()
    ours = F.cross_entropy(module.scores(batch, prompt, False), batch["target_token"])
    embeds = place_prompt(backbone.embed(batch["input_ids"]), batch["prompt_index"], prompt)
    torch.testing.assert_close(ours, full_logits_loss(backbone, batch, embeds))


def test_candidate_sliced_logits_equal_full_logits_indexed(backbone) -> None:
    data = lama_data(backbone)
    batch = next(iter(data.test_dataloader()))
    embeds = backbone.embed(batch["input_ids"])
    args = (embeds, batch["attention_mask"], batch["answer_position"])
    with torch.inference_mode():
        full = backbone.logits_at(*args)
        sliced = backbone.logits_at(*args, token_ids=data.candidate_ids)
    torch.testing.assert_close(sliced, full[:, data.candidate_ids])


def test_length_grouped_batches_keep_each_epochs_examples() -> None:
    lengths = [
        int(x) for x in torch.randint(3, 30, (203,), generator=torch.Generator().manual_seed(0))
    ]
    for epoch in range(3):
        plain, grouped = (
            EpochShuffleSampler(203, seed=5, **options)
            for options in ({}, {"lengths": lengths, "batch_size": 8})
        )
        plain.set_epoch(epoch), grouped.set_epoch(epoch)
        order = list(grouped)
        assert sorted(order) == sorted(plain) == list(range(203))
        assert order == list(grouped)  # reproducible (resume)
        batches = [order[i : i + 8] for i in range(0, 200, 8)]
        padding = sum(8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
        plain_order = list(plain)
        plain_batches = [plain_order[i : i + 8] for i in range(0, 200, 8)]
        plain_padding = sum(
            8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in plain_batches
        )
        assert padding < plain_padding / 3


def test_length_grouped_ddp_shards_cover_the_epoch() -> None:
    lengths = list(range(50, 0, -1))
    shards = [
        list(EpochShuffleSampler(50, 1, rank, 2, lengths=lengths, batch_size=8)) for rank in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == list(range(50))


def test_sorted_evaluation_gives_the_same_scores(backbone) -> None:
    """Longest first: the same per-example candidate scores and P@1 as the split's order."""
    data = lama_data(backbone)
    module = module_for(backbone, data)
    scores = {}
    for by_length in (False, True):
        data.sort_eval_by_length, per_example = by_length, {}
        with torch.inference_mode():
            for batch in data.test_dataloader():
                out = module.scores(batch, module.prompt(), candidates=True)
                per_example.update(zip(batch["index"].tolist(), out, strict=True))
        scores[by_length] = per_example
    data.sort_eval_by_length = True
    assert scores[True].keys() == scores[False].keys()
    for index, row in scores[False].items():
        torch.testing.assert_close(scores[True][index], row, atol=1e-5, rtol=1e-5)
        assert scores[True][index].argmax() == row.argmax()
    assert list(EvalShardSampler(5, lengths=[1, 5, 3, 5, 2])) == [1, 3, 2, 4, 0]


def prompt_grad(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    data = lama_data(backbone)
    module, batch = module_for(backbone, data), next(iter(data.train_dataloader()))
    loss = F.cross_entropy(module.scores(batch, module.prompt(), False), batch["target_token"])
    (grad,) = torch.autograd.grad(loss, module.encoder.embedding.weight)
    return loss.detach(), grad


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_gradient_checkpointing_gives_the_same_gradient(name, request) -> None:
    """Checkpointed layers still pass the gradient to the input embeddings (the prompt)."""
    from conftest import tiny_backbone

    plain = request.getfixturevalue(name)
    checkpointed = configure_execution(
        tiny_backbone(plain.name, plain.kind), gradient_checkpointing=True
    )
    recomputed = []
    layer = next(
        m for m in checkpointed.body.modules() if isinstance(m, GradientCheckpointingLayer)
    )
    next(layer.children()).register_forward_hook(lambda *_: recomputed.append(1))
    loss, grad = prompt_grad(plain)
    loss_ckpt, grad_ckpt = prompt_grad(checkpointed)
    torch.testing.assert_close(loss_ckpt, loss)
    torch.testing.assert_close(grad_ckpt, grad)
    assert len(recomputed) == 2  # the forward, then the recomputation in the backward pass


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_length_buckets_give_each_rows_own_states_and_the_same_gradient(name, request) -> None:
    """execution.length_buckets=3 on five right-padded rows of lengths 2, 9, 4, 7, 3: three
    body calls on 2, 2 and 1 rows (by length: [2, 3], [4, 7], [9]) cut to 3, 7 and 9 tokens;
    each real token's state equals that row run alone with no padding (a plain transformers
    forward); and a prompt's loss and gradient on a LAMA batch
    equal those of the unbucketed backbone."""
    from conftest import tiny_backbone

    plain = request.getfixturevalue(name)
    bucketed = configure_execution(tiny_backbone(plain.name, plain.kind), length_buckets=3)
    lengths = [2, 9, 4, 7, 3]
    rows = [[(7 * i + 3 * j) % 90 + 5 for j in range(n)] for i, n in enumerate(lengths)]
    ids = torch.tensor([r + [0] * (9 - len(r)) for r in rows])
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    calls = []
    hook = bucketed.body.register_forward_hook(
        lambda _m, _a, kwargs, _o: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])),
        with_kwargs=True,
    )
    with torch.no_grad():
        states = bucketed.hidden(bucketed.embed(ids), mask)
    hook.remove()
    assert calls == [(2, 3), (2, 7), (1, 9)]
    for i, row in enumerate(rows):
        with torch.no_grad():
            alone = plain.model.base_model(input_ids=torch.tensor([row])).last_hidden_state[0]
        torch.testing.assert_close(states[i, : len(row)], alone, atol=1e-5, rtol=1e-5)

    loss, grad = prompt_grad(plain)
    loss_b, grad_b = prompt_grad(bucketed)
    torch.testing.assert_close(loss_b, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_b, grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_length_buckets_must_be_a_whole_number(gpt2, value) -> None:
    with pytest.raises(ValueError, match="execution.length_buckets must be a whole number"):
        configure_execution(gpt2, length_buckets=value)


def test_compiled_backbone_gives_the_same_loss(gpt2) -> None:
    """The compile switch (here the quick ``eager`` backend; ``true`` means inductor)."""
    from conftest import tiny_backbone

    compiled = configure_execution(tiny_backbone("tiny-gpt2", "causal"), compile="eager")
    loss, grad = prompt_grad(gpt2)
    loss_c, grad_c = prompt_grad(compiled)
    torch.testing.assert_close(loss_c, loss)
    torch.testing.assert_close(grad_c, grad)


@pytest.mark.parametrize(
    "options", [{"compile": "eager"}, {"gradient_checkpointing": True}], ids=["compile", "ckpt"]
)
def test_trainable_copy_runs_its_own_body(options) -> None:
    """The fine-tuning baselines train ``trainable_copy()``: with the execution options on,
    the copy's forward must run the copy's body weights (and give them gradients), not the
    original's. Expected: an eager, uncompiled tiny GPT-2 with the same weight change."""
    from conftest import tiny_backbone

    original = configure_execution(tiny_backbone("tiny-gpt2", "causal"), **options)
    copied, reference = original.trainable_copy(), tiny_backbone("tiny-gpt2", "causal")
    with torch.no_grad():
        for backbone in (copied, reference):
            backbone.body.ln_f.weight.mul_(3.0)
            backbone.body.h[0].mlp.c_fc.bias.add_(0.5)
    ids = torch.tensor([[5, 17, 301, 42], [7, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    hidden = copied.hidden(copied.embed(ids), mask)
    with torch.no_grad():
        expected = reference.hidden(reference.embed(ids), mask)
        unchanged = original.hidden(original.embed(ids), mask)
    torch.testing.assert_close(hidden, expected)
    assert not torch.allclose(hidden, unchanged, atol=1e-3)
    hidden.square().sum().backward()
    assert copied.body.h[0].mlp.c_fc.bias.grad.abs().sum() > 0
    assert original.body.h[0].mlp.c_fc.bias.grad is None  # frozen, untouched


def test_bf16_backbone_keeps_an_fp32_prompt_encoder(gpt2) -> None:
    from conftest import tiny_backbone

    half = tiny_backbone("tiny-gpt2", "causal").to(torch.bfloat16)
    data = lama_data(half)
    module, batch = module_for(half, data), next(iter(data.train_dataloader()))
    logits = module.scores(batch, module.prompt(), False)
    F.cross_entropy(logits, batch["target_token"]).backward()
    assert all(p.dtype == torch.float32 for p in module.encoder.parameters())
    assert module.encoder.embedding.weight.grad.dtype == torch.float32
    assert logits.dtype == torch.float32  # the loss is taken in fp32
