"""PromptModule: only the prompt encoder trains; the backbone stays frozen, out of checkpoints."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.prompting.encoders import LSTMPromptEncoder

PAPER = "[P*3] [X] [P*3] [Y] [P*3]"


@functools.cache
def lama_data(backbone) -> LamaDataModule:
    """P1376 (capital of) with the paper's template, encoded once per backbone."""
    key = "gpt2-xl" if backbone.kind == "causal" else "bert-base-cased"
    data = LamaDataModule(
        str(ROOT / "data" / "lama"),
        "P1376",
        backbone.tokenizer,
        backbone.kind,
        template=PAPER,
        vocab_key=key,
        batch_size=4,
        seed=1,
    )
    data.setup()
    return data


def make_module(backbone, loss_over: str = "vocab", scheduler=None) -> PromptModule:
    data = lama_data(backbone)
    torch.manual_seed(0)
    encoder = LSTMPromptEncoder(data.template.n_prompt, backbone.hidden_size)
    optimizer = functools.partial(torch.optim.Adam, lr=1e-2)
    return PromptModule(backbone, data.candidate_ids, encoder, optimizer, scheduler, loss_over)


def first_batch(backbone) -> dict[str, torch.Tensor]:
    return next(iter(lama_data(backbone).train_dataloader()))


def frozen_state(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def assert_unchanged(backbone, before: dict[str, torch.Tensor]) -> None:
    after = backbone.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def encoder_keys(module: PromptModule) -> set[str]:
    return {f"encoder.{k}" for k in module.encoder.state_dict()}


def test_gradients_reach_the_encoder_only(backbone):
    """A backward pass gives every encoder parameter a gradient and no backbone weight one."""
    module = make_module(backbone).train()
    module.training_step(first_batch(backbone), 0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


def test_backbone_stays_in_eval_mode(backbone):
    """module.train() turns the encoder's dropout on but never the backbone's: scores of the
    same batch stay identical in training mode."""
    module = make_module(backbone).train()
    assert module.training and module.encoder.training
    assert not any(m.training for m in backbone.modules())
    batch, prompt = first_batch(backbone), module.prompt()
    assert torch.equal(module.scores(batch, prompt, True), module.scores(batch, prompt, True))


def test_optimizer_sees_only_encoder_parameters(backbone):
    """Adam gets the encoder's tensors, not the frozen backbone's; the scheduler steps per epoch."""
    scheduler = functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5)
    module = make_module(backbone, scheduler=scheduler)
    (optimizer,), schedulers = module.configure_optimizers()
    optimized = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in module.encoder.parameters()}
    assert len(optimized) == len(list(module.encoder.parameters()))
    assert [s["interval"] for s in schedulers] == ["epoch"]
    assert isinstance(make_module(backbone).configure_optimizers(), torch.optim.Adam)


def test_nothing_to_train_is_refused(gpt2):
    """A prompt without pseudo tokens has no encoder: it is evaluated, not trained."""
    module = PromptModule(gpt2, lama_data(gpt2).candidate_ids, None, torch.optim.Adam)
    assert module.prompt().shape == (0, gpt2.hidden_size)
    with pytest.raises(RuntimeError, match="nothing to train"):
        module.configure_optimizers()


class RecordModes(Callback):
    """Records, at every training batch, whether the module and the backbone are in train mode."""

    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.modes.append((module.training, any(m.training for m in module.backbone.modules())))


def test_fit_trains_prompt_and_saves_only_it(backbone, tmp_path):
    """Two Lightning steps: the encoder moves, the backbone is bit-identical and in eval mode
    throughout, and the checkpoint holds the encoder alone (kilobytes)."""
    module = make_module(backbone)
    before, start = frozen_state(backbone), frozen_state(module.encoder)
    modes = RecordModes()
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[modes, ModelCheckpoint(dirpath=tmp_path, filename="prompt")],
    )
    trainer.fit(module, lama_data(backbone))
    assert modes.modes == [(True, False)] * 2
    assert_unchanged(backbone, before)
    assert not all(torch.equal(module.encoder.state_dict()[k], v) for k, v in start.items())
    path = tmp_path / "prompt.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert set(checkpoint["state_dict"]) == encoder_keys(module)
    assert path.stat().st_size < 1_000_000


def test_checkpoint_hook_drops_frozen_weights(gpt2):
    """on_save_checkpoint keeps exactly the trainable tensors of the full state dict."""
    module = make_module(gpt2)
    checkpoint = {"state_dict": module.state_dict()}
    assert any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == encoder_keys(module)


def plain_forward_logits(backbone, batch: dict[str, torch.Tensor], prompt: torch.Tensor):
    """The answer-slot logits (B, V) of the transformers model's own full forward, with each
    pseudo-token position's input embedding replaced by its prompt row, one by one."""
    embeds = backbone.model.get_input_embeddings()(batch["input_ids"]).clone()
    for row, position in (batch["prompt_index"] >= 0).nonzero().tolist():
        embeds[row, position] = prompt[batch["prompt_index"][row, position]]
    logits = backbone.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    return logits[torch.arange(len(logits)), batch["answer_position"]]


def test_loss_over_vocab_or_candidates(backbone):
    """``vocab``: cross-entropy over every token (the paper); ``candidates``: over the candidate
    words only, hence never larger for the same prompt. Both as computed from the plain
    transformers forward of the batch with the prompt in place."""
    batch = first_batch(backbone)
    losses = {}
    for loss_over in ("vocab", "candidates"):
        module = make_module(backbone, loss_over)
        with torch.no_grad():
            logits = plain_forward_logits(backbone, batch, module.prompt())
            losses[loss_over] = module.training_step(batch, 0)
    cand = lama_data(backbone).candidate_ids
    vocab = F.cross_entropy(logits, batch["target_token"])
    torch.testing.assert_close(losses["vocab"], vocab, rtol=1e-5, atol=1e-5)
    candidates = F.cross_entropy(logits[:, cand], batch["target_index"])
    torch.testing.assert_close(losses["candidates"], candidates, rtol=1e-5, atol=1e-5)
    assert losses["candidates"] < losses["vocab"]


def test_invalid_loss_over_is_refused(gpt2):
    """A typo in prompt.loss_over fails at construction, naming the valid choices."""
    with pytest.raises(ValueError, match=r"loss_over must be one of \('vocab', 'candidates'\)"):
        make_module(gpt2, "tokens")
